"""Fast reading of JPEG-tiled TIFF pyramid levels: raw tile bytes decoded by Pillow.

OpenSlide decodes JPEG tiles into premultiplied ARGB and we convert that back to RGB; for the
TIFF-family formats whose tiles are plain JPEG on a regular grid (generic tiled TIFF as written
by libvips/tifffile, Aperio SVS with JPEG tiles) it is about 3x cheaper per pixel to take each
tile's bytes from the file (offsets from tifffile), put the shared JPEGTables in front of
abbreviated tile streams, and decode them with Pillow (libjpeg-turbo) straight to RGB.

Only levels that are exactly that are read here: anything else (JPEG 2000, LZW, other vendors'
layouts with overlaps or offsets) stays with OpenSlide, decided per level when a slide is opened.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

#: OpenSlide vendors whose pyramid levels are the file's tiled TIFF pages, tile grid as stored.
VENDORS = ("generic-tiff", "aperio")
#: TIFF photometric interpretation -> colour space of the JPEG data (Aperio writes RGB JPEG).
JPEG_COLOURS = {2: "RGB", 6: "YCbCr"}
JPEG = 7  # TIFF compression tag value of (new-style) JPEG

log = logging.getLogger("histoseg")


class TileDecodeError(OSError):
    """A tile's bytes are missing or not a JPEG stream Pillow can decode."""


@dataclass(frozen=True)
class JpegTiffLevel:
    """One JPEG-tiled page: where each tile's bytes are and how to decode them."""

    fd: int
    width: int
    height: int
    tile_width: int
    tile_height: int
    offsets: tuple[int, ...]
    bytecounts: tuple[int, ...]
    tables: bytes | None  # JPEGTables (SOI, DQT/DHT, EOI) shared by abbreviated tile streams
    colour: str  # "RGB" or "YCbCr": the JPEG data's colour space, as the TIFF tags say

    @property
    def tiles_across(self) -> int:
        return math.ceil(self.width / self.tile_width)

    def reduction(self, scale: float) -> int:
        """The largest DCT-domain shrink (1, 2, 4 or 8) at most ``scale`` that divides the
        tile size: libjpeg decodes straight to 1/2, 1/4, 1/8 at a fraction of the cost, each
        output pixel about the mean of its block (a box filter)."""
        return next(r for r in (8, 4, 2, 1) if r <= scale + 1e-9
                    and self.tile_width % r == 0 and self.tile_height % r == 0)

    def _tile(self, index: int, reduce: int) -> np.ndarray | None:
        """Tile ``index`` as RGB shrunk by ``reduce``, None where the file has none."""
        count = self.bytecounts[index]
        if count == 0:
            return None
        data = os.pread(self.fd, count, self.offsets[index])
        if len(data) != count:
            raise TileDecodeError(f"tile {index} is truncated ({len(data)} of {count} bytes)")
        if self.tables is not None and data[:2] == b"\xff\xd8":
            data = self.tables[:-2] + data[2:]  # tables without EOI, tile without SOI
        size = (self.tile_width // reduce, self.tile_height // reduce)
        try:
            image = Image.frombytes("RGB", size, data, "jpeg", "RGB", self.colour, reduce)
        except (OSError, ValueError) as err:
            raise TileDecodeError(f"tile {index}: {err}") from None
        return np.asarray(image)

    def read(self, x: int, y: int, width: int, height: int, background: tuple[int, ...],
             reduce: int = 1) -> np.ndarray:
        """RGB (height, width, 3) of the level shrunk by ``reduce`` (see :meth:`reduction`),
        from pixel (x, y) of that shrunk level; areas outside the level or without a stored
        tile are ``background``."""
        x0, y0 = max(0, x), max(0, y)
        x1 = min(math.ceil(self.width / reduce), x + width)
        y1 = min(math.ceil(self.height / reduce), y + height)
        tw, th = self.tile_width // reduce, self.tile_height // reduce
        grid = [(tx, ty) for ty in range(y0 // th, (y1 - 1) // th + 1)
                for tx in range(x0 // tw, (x1 - 1) // tw + 1)] if x1 > x0 and y1 > y0 else []
        out = np.empty((height, width, 3), dtype=np.uint8)
        inside = (x0, y0, x1, y1) == (x, y, x + width, y + height)
        if not inside or not all(self.bytecounts[ty * self.tiles_across + tx]
                                 for tx, ty in grid):
            out[...] = background  # only where needed: filling a whole strip costs a copy
        for tx, ty in grid:
            tile = self._tile(ty * self.tiles_across + tx, reduce)
            if tile is None:
                continue
            # intersection of the tile with the region
            ax0, ay0 = max(x0, tx * tw), max(y0, ty * th)
            ax1, ay1 = min(x1, (tx + 1) * tw), min(y1, (ty + 1) * th)
            out[ay0 - y:ay1 - y, ax0 - x:ax1 - x] = \
                tile[ay0 - ty * th:ay1 - ty * th, ax0 - tx * tw:ax1 - tx * tw]
        return out


class JpegTiffPyramid:
    """The JPEG-tiled levels of a TIFF-family slide, matched to OpenSlide's levels by size."""

    def __init__(self, path: Path, levels: dict[int, JpegTiffLevel], fd: int) -> None:
        self.path = path
        self.levels = levels
        self._fd = fd

    @classmethod
    def open(cls, path: Path, level_dimensions: tuple[tuple[int, int], ...]
             ) -> JpegTiffPyramid | None:
        """The pyramid's readable levels, or None when no level qualifies (or tifffile cannot
        parse the file: OpenSlide reads it as before)."""
        import tifffile  # only when a TIFF-family slide is opened: keeps CLI start-up short

        try:
            with tifffile.TiffFile(path) as tif:
                pages = {}  # (width, height) -> first tiled page of that size
                for page in tif.pages:
                    if isinstance(page, tifffile.TiffPage) and page.is_tiled:
                        pages.setdefault((page.imagewidth, page.imagelength), page)
                specs = {i: spec for i, size in enumerate(level_dimensions)
                         if size in pages and (spec := _level_spec(pages[size])) is not None}
        except Exception as err:  # noqa: BLE001 - any parse failure: OpenSlide reads it instead
            log.debug("%s: JPEG fast path off (%s: %s)", path, type(err).__name__, err)
            return None
        if not specs:
            return None
        fd = os.open(path, os.O_RDONLY)
        levels = {i: JpegTiffLevel(fd, **spec) for i, spec in specs.items()}
        return cls(path, levels, fd)

    def close(self) -> None:
        os.close(self._fd)


def _level_spec(page: Any) -> dict[str, Any] | None:
    """:class:`JpegTiffLevel` fields of a tifffile page of 8-bit 3-sample JPEG tiles, or None
    for any other page."""
    colour = JPEG_COLOURS.get(int(page.photometric))
    if (int(page.compression) != JPEG or colour is None or page.samplesperpixel != 3
            or page.bitspersample != 8 or int(page.planarconfig) != 1
            or page.imagedepth != 1 or page.tiledepth != 1):
        return None
    tw, th = int(page.tilewidth), int(page.tilelength)
    n = math.ceil(page.imagewidth / tw) * math.ceil(page.imagelength / th)
    if len(page.dataoffsets) != n or len(page.databytecounts) != n:
        return None
    tables = page.jpegtables
    if tables is not None and not (tables[:2] == b"\xff\xd8" and tables[-2:] == b"\xff\xd9"):
        return None
    return {"width": int(page.imagewidth), "height": int(page.imagelength), "tile_width": tw,
            "tile_height": th, "offsets": tuple(int(o) for o in page.dataoffsets),
            "bytecounts": tuple(int(c) for c in page.databytecounts),
            "tables": bytes(tables) if tables is not None else None, "colour": colour}
