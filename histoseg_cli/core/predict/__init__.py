"""Stage 4: classification-gated prediction of patches artifacts, images and whole slides."""
