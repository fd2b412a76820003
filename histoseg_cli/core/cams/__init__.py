"""Stage 2 (``histoseg cams``): multi-layer Grad-CAM -> pseudo masks (METHOD.md, stage 2)."""
