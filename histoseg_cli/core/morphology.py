"""Small binary-mask operations shared by tissue detection and the CAM background rule."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def drop_small_components(mask: np.ndarray, min_pixels: float) -> np.ndarray:
    """``mask`` (bool, 2-D) without 4-connected components of fewer than ``min_pixels`` pixels."""
    labels, count = ndimage.label(mask)  # default structure: 4-connectivity
    if not count:
        return mask.astype(bool)
    keep = np.bincount(labels.ravel()) >= min_pixels
    keep[0] = False
    return keep[labels]
