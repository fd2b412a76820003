"""Stage 2 (``histoseg cams``): multi-layer Grad-CAM -> pseudo masks (docs/method.md, stage 2)."""
