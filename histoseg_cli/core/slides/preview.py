"""The PNG saved beside each slide's artifact: thumbnail, tissue mask and kept tiles."""

from __future__ import annotations


import numpy as np
from PIL import Image, ImageDraw

from histoseg_cli.core.slides.tissue import TissueMask

GLASS_TINT = np.array([40, 40, 60], dtype=np.float32)  # what is not tissue is darkened
PEN_TINT = np.array([230, 30, 30], dtype=np.float32)
TILE_COLOUR = (0, 200, 90)


def render_preview(thumbnail: np.ndarray, mask: TissueMask, tiles: np.ndarray,
                   tile_size: float, scale: tuple[float, float]) -> Image.Image:
    """Non-tissue darkened, pen marks red, kept tiles outlined in green.

    ``tiles`` are level-0 origins (N, 2), ``tile_size`` their level-0 side and ``scale`` the
    level-0 pixels per thumbnail pixel (x, y).
    """
    image = thumbnail.astype(np.float32)
    outside = ~mask.tissue
    image[outside] = image[outside] * 0.45 + GLASS_TINT * 0.55
    image[mask.pen] = image[mask.pen] * 0.4 + PEN_TINT * 0.6
    preview = Image.fromarray(image.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(preview)
    sx, sy = scale
    for x, y in tiles:
        draw.rectangle([x / sx, y / sy, (x + tile_size) / sx - 1, (y + tile_size) / sy - 1],
                       outline=TILE_COLOUR)
    return preview
