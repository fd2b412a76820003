"""Tissue detection on a slide thumbnail, and the tissue fraction of each tile.

Tissue is what is saturated (Otsu threshold on HSV saturation, bounded so that a slide that is
all tissue or all glass is not split in two), minus white glass, black ink/scanner borders and
green/blue pen marks, cleaned with morphology (closing, filling small holes, small-object removal).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from histoseg_cli.core.morphology import drop_small_components


@dataclass(frozen=True)
class TissueConfig:
    """Thresholds of the detector (saturation and value in 0..1, hue in degrees)."""

    min_saturation: float = 0.05  # bounds of the Otsu threshold on saturation
    max_saturation: float = 0.15
    white_value: float = 0.92  # brighter and barely saturated: glass
    black_value: float = 0.15  # darker than this: ink, scanner border, debris
    pen_hues: tuple[float, float] = (70.0, 230.0)  # green..blue; H&E is purple..pink
    pen_saturation: float = 0.35
    min_pen_fraction: float = 1e-3  # pen strokes are large; smaller blue/dark spots are tissue
    min_object_fraction: float = 2e-4  # drop specks smaller than this share of the thumbnail
    max_hole_fraction: float = 1e-3  # fill holes up to this share; larger ones (lumens) stay
    smoothing: float = 0.004  # closing radius as a share of the thumbnail's longer side


@dataclass(frozen=True)
class TissueMask:
    """Boolean masks over the thumbnail."""

    tissue: np.ndarray
    pen: np.ndarray
    threshold: float  # the saturation threshold used

    @property
    def fraction(self) -> float:
        return float(self.tissue.mean())


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1] (maximises the between-class variance)."""
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    centres = (edges[:-1] + edges[1:]) / 2
    weight1 = np.cumsum(hist)
    weight2 = weight1[-1] - weight1
    mean1 = np.cumsum(hist * centres) / np.maximum(weight1, 1)
    total = (hist * centres).sum()
    mean2 = (total - np.cumsum(hist * centres)) / np.maximum(weight2, 1)
    between = weight1 * weight2 * (mean1 - mean2) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def _hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue (degrees), saturation and value (0..1) of an RGB uint8 image."""
    hsv = np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).convert("HSV"))
    return (hsv[..., 0] * (360.0 / 256.0), hsv[..., 1] / 255.0, hsv[..., 2] / 255.0)


#: Up to this radius, morphology uses a disk structuring element (fast for small disks);
#: beyond it, the distance transform (its cost does not grow with the radius). Same result.
MAX_DISK_RADIUS = 8


def _disk(radius: float) -> np.ndarray:
    r = int(radius)
    y, x = np.ogrid[-r:r + 1, -r:r + 1]
    return x * x + y * y <= radius * radius


def _dilate(mask: np.ndarray, radius: float) -> np.ndarray:
    """Dilation by a disk of ``radius`` (Euclidean)."""
    if not mask.any():
        return mask.copy()
    if radius <= MAX_DISK_RADIUS:
        return ndimage.binary_dilation(mask, _disk(radius))
    return ndimage.distance_transform_edt(~mask) <= radius


def _erode(mask: np.ndarray, radius: float) -> np.ndarray:
    """Erosion by a disk of ``radius``; outside the image is not tissue."""
    if radius <= MAX_DISK_RADIUS:
        return ndimage.binary_erosion(mask, _disk(radius), border_value=0)
    padded = np.pad(mask, 1)
    return (ndimage.distance_transform_edt(padded) > radius)[1:-1, 1:-1]


def detect_tissue(rgb: np.ndarray, config: TissueConfig = TissueConfig()) -> TissueMask:
    """Tissue and pen masks of an RGB thumbnail (H, W, 3) uint8."""
    hue, sat, val = _hsv(rgb)
    threshold = float(np.clip(otsu_threshold(sat), config.min_saturation, config.max_saturation))
    glass = (val > config.white_value) & (sat < config.max_saturation)
    black = val < config.black_value
    lo, hi = config.pen_hues
    pen = (hue >= lo) & (hue <= hi) & (sat > config.pen_saturation) | black
    side = max(rgb.shape[:2])
    radius = max(1, round(config.smoothing * side))
    pen = drop_small_fraction(_erode(_dilate(pen, radius), radius), config.min_pen_fraction)
    pen = _dilate(pen, radius)
    tissue = (sat > threshold) & ~glass & ~pen
    tissue = _erode(_dilate(tissue, radius), radius)
    holes = ndimage.binary_fill_holes(tissue) & ~tissue
    tissue |= holes & ~drop_small_fraction(holes, config.max_hole_fraction) & ~pen
    opening = max(1.0, radius / 2)
    tissue = _dilate(_erode(tissue, opening), opening) & tissue
    tissue = drop_small_fraction(tissue, config.min_object_fraction)
    return TissueMask(tissue=tissue, pen=pen, threshold=threshold)


def drop_small_fraction(mask: np.ndarray, min_fraction: float) -> np.ndarray:
    """``mask`` without connected components smaller than ``min_fraction`` of its area."""
    return drop_small_components(mask, min_fraction * mask.size)


def tile_fractions(mask: np.ndarray, scale: tuple[float, float], xs: np.ndarray, ys: np.ndarray,
                   size: float) -> np.ndarray:
    """Share of each tile covered by ``mask``.

    ``scale`` = level-0 pixels per mask pixel (x, y); tiles have level-0 origins ``xs``, ``ys``
    and side ``size``. Uses a summed-area table, so it costs the same for any tile count.
    """
    h, w = mask.shape
    table = np.zeros((h + 1, w + 1), dtype=np.int64)
    table[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    sx, sy = scale

    def span(origin: np.ndarray, s: float, n: int) -> tuple[np.ndarray, np.ndarray]:
        a = np.clip(np.floor(origin / s + 0.5).astype(np.int64), 0, n - 1)
        b = np.clip(np.floor((origin + size) / s + 0.5).astype(np.int64), a + 1, n)
        return a, b

    x0, x1 = span(np.asarray(xs, dtype=np.float64), sx, w)
    y0, y1 = span(np.asarray(ys, dtype=np.float64), sy, h)
    inside = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
    return inside / ((x1 - x0) * (y1 - y0))
