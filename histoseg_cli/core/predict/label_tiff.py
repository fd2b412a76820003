"""A slide's label map as a tiled pyramidal TIFF that slide viewers open (``--labels-tiff``).

uint8 class indices (background = C) in 256 px tiles, deflate-compressed, with the class
palette as the TIFF colour map (viewers show colours, analysis reads indices), the
resolution recorded (so it lines up with the slide at its mpp), and levels halved by nearest
neighbour (labels are never blended) down to about one tile. Levels follow each other as
pages, the layout OpenSlide's generic-TIFF reader and QuPath expect.

Written tile row by tile row from the stitched map in the slide's artifact: one row of tiles
of the finest level in memory, whatever the slide's size. Written under a temporary name and
renamed when complete, so a failure (a full disk) leaves no file that looks complete.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from histoseg_cli.core.atomic import atomic_path

TILE = 256


def _tiles(dataset: h5py.Dataset, step: int, width: int, height: int) -> Iterator[np.ndarray]:
    """The level's tiles in row-major order: every ``step``-th pixel of the map, read one
    row of tiles at a time."""
    for y0 in range(0, height, TILE):
        band = dataset[y0 * step:min(dataset.shape[0], (y0 + TILE) * step):step, ::step]
        band = band[:, :width]
        for x0 in range(0, width, TILE):
            tile = np.zeros((TILE, TILE), np.uint8)
            part = band[:, x0:x0 + TILE]
            tile[:part.shape[0], :part.shape[1]] = part
            yield tile


def write_label_tiff(artifact: Path, dataset_name: str, path: Path, palette: np.ndarray,
                     mpp: float | None) -> Path:
    """The label map ``dataset_name`` of ``artifact`` as a pyramidal palette TIFF at ``path``
    (``mpp``: the map's um/px, recorded as the resolution)."""
    import tifffile

    colormap = np.zeros((3, 256), np.uint16)
    colors = np.asarray(palette, np.uint16)[:256, :3]
    colormap[:, :len(colors)] = colors.T * 257
    with h5py.File(artifact, "r") as f, atomic_path(path) as tmp:
        dataset = f[dataset_name]
        height, width = dataset.shape
        with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
            step = 1
            while True:
                w, h = -(-width // step), -(-height // step)
                options: dict[str, object] = {"subfiletype": 1} if step > 1 else {}
                if mpp:
                    scale = 1e4 / (mpp * step)  # pixels per centimetre at this level
                    options.update(resolution=(scale, scale), resolutionunit="CENTIMETER")
                tw.write(_tiles(dataset, step, w, h), shape=(h, w), dtype="uint8",
                         tile=(TILE, TILE), photometric="palette", colormap=colormap,
                         compression="zlib", metadata=None, **options)
                if max(w, h) <= TILE:
                    break
                step *= 2
    return path
