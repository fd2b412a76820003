"""A slide's maps as tiled pyramidal TIFFs that slide viewers open: the label map
(``--labels-tiff``) and one probability heatmap per class (``--heatmaps``).

uint8 in 256 px tiles, deflate-compressed, the resolution recorded (so it lines up with the
slide at its mpp), and levels halved by nearest neighbour (labels are never blended) down to
about one tile. The label map holds class indices (background = C) with the class palette as
the TIFF colour map (viewers show colours, analysis reads indices); a heatmap is greyscale,
0-255 for probability 0-1. Levels follow each other as pages, the layout OpenSlide's
generic-TIFF reader and QuPath expect.

Written tile row by tile row from the stitched maps in the slide's artifact: one row of tiles
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


def _tiles(dataset: h5py.Dataset, plane: tuple[int, ...], step: int, width: int, height: int
           ) -> Iterator[np.ndarray]:
    """The level's tiles in row-major order: every ``step``-th pixel of the map (``plane``
    picks a class's plane of a (C, H, W) dataset), read one row of tiles at a time."""
    rows = dataset.shape[-2]
    for y0 in range(0, height, TILE):
        band = dataset[(*plane, slice(y0 * step, min(rows, (y0 + TILE) * step), step),
                        slice(None, None, step))]
        band = band[:, :width]
        for x0 in range(0, width, TILE):
            tile = np.zeros((TILE, TILE), np.uint8)
            part = band[:, x0:x0 + TILE]
            tile[:part.shape[0], :part.shape[1]] = part
            yield tile


def write_map_tiff(artifact: Path, dataset_name: str, path: Path, mpp: float | None,
                   palette: np.ndarray | None = None, plane: int | None = None) -> Path:
    """The map ``dataset_name`` of ``artifact`` (its plane ``plane`` for a (C, H, W) dataset)
    as a pyramidal TIFF at ``path``: with the palette as its colour map when given (labels),
    else greyscale. ``mpp``: the map's um/px, recorded as the resolution."""
    import tifffile

    style: dict[str, object] = {"photometric": "minisblack"}
    if palette is not None:
        colormap = np.zeros((3, 256), np.uint16)
        colors = np.asarray(palette, np.uint16)[:256, :3]
        colormap[:, :len(colors)] = colors.T * 257
        style = {"photometric": "palette", "colormap": colormap}
    index = () if plane is None else (plane,)
    with h5py.File(artifact, "r") as f, atomic_path(path, sweep=True) as tmp:
        dataset = f[dataset_name]
        height, width = dataset.shape[-2:]
        with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
            step = 1
            while True:
                w, h = -(-width // step), -(-height // step)
                options: dict[str, object] = {"subfiletype": 1} if step > 1 else {}
                if mpp:
                    scale = 1e4 / (mpp * step)  # pixels per centimetre at this level
                    options.update(resolution=(scale, scale), resolutionunit="CENTIMETER")
                tw.write(_tiles(dataset, index, step, w, h), shape=(h, w), dtype="uint8",
                         tile=(TILE, TILE), compression="zlib", metadata=None, **style,
                         **options)
                if max(w, h) <= TILE:
                    break
                step *= 2
    return path
