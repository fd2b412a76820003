"""histoseg: tissue semantic segmentation for histopathology from patch-level labels."""

__version__ = "0.1.0"
