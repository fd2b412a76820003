"""Streaming tiles out of a slide: grid, strip tasks, strip reading, parallel workers.

Kept tiles are grouped into strips: a few consecutive grid rows and a run of columns, read from
the chosen pyramid level as ONE region (so each compressed tile of the file is decoded about
once, not once per patch), resampled once with an antialiasing filter, then cut. A strip's
region is bounded (``max_region_pixels``), so memory does not grow with the slide. Strips are
read in worker processes, each with its own slide handle, which also encode the patches for
storage (so only compressed bytes travel back), and come back in grid order.
"""

from __future__ import annotations

import functools
import math
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from histoseg_cli.core.parallel import follow_parent, ordered_map
from histoseg_cli.core.slides.reader import SlideReader

#: Level pixels read at once for one strip (about 4 bytes each while decoding).
MAX_REGION_PIXELS = 8 * 1024 * 1024
#: Height of a strip in level pixels: several rows of the file's tiles, so that tiles shared
#: by two strips (decoded twice) are few.
STRIP_HEIGHT = 2048


@dataclass(frozen=True)
class Grid:
    """Tile origins on the target-resolution pixel grid (full tiles only)."""

    patch_size: int
    stride: int
    width: int  # slide size in target pixels
    height: int

    @property
    def xs(self) -> np.ndarray:
        return np.arange(0, self.width - self.patch_size + 1, self.stride, dtype=np.int64)

    @property
    def ys(self) -> np.ndarray:
        return np.arange(0, self.height - self.patch_size + 1, self.stride, dtype=np.int64)

    def origins(self) -> np.ndarray:
        """All tile origins (N, 2) as (x, y), row by row."""
        xs, ys = np.meshgrid(self.xs, self.ys)
        return np.stack([xs.ravel(), ys.ravel()], axis=1)


@dataclass(frozen=True)
class Strip:
    """One region of a level to read and the tiles to cut from it."""

    path: Path
    level: int
    level_downsample: float
    scale: float  # level pixels per target pixel
    tiles: np.ndarray  # (K, 2) target-pixel origins (x, y), grid order
    patch_size: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        """Target-pixel bounds (x0, y0, x1, y1) of the tiles."""
        (x0, y0), (x1, y1) = self.tiles.min(axis=0), self.tiles.max(axis=0) + self.patch_size
        return int(x0), int(y0), int(x1), int(y1)


def _aligned(count: int, step: float, tile: int | None) -> int:
    """The largest ``n <= count`` whose span ``n * step`` is a whole number of the file's
    tiles (so that neighbouring strips share no tile, none is decoded twice), else ``count``."""
    if tile:
        for n in range(count, max(0, count // 2), -1):
            span = n * step / tile
            if abs(span - round(span)) < 1e-6:
                return n
    return count


def plan_strips(tiles: np.ndarray, grid: Grid, *, path: Path, level: int,
                level_downsample: float, scale: float,
                max_region_pixels: int = MAX_REGION_PIXELS,
                file_tile: tuple[int, int] | None = None,
                strip_height: int | None = None) -> list[Strip]:
    """Group kept tile origins (grid order) into strips of bounded region size.

    A strip spans up to ``strip_height`` (default ``STRIP_HEIGHT``) level pixels of consecutive grid rows and a run of
    columns; runs break where two or more columns in a row have no kept tile, so glass between
    tissue pieces is not decoded. Given the file's tile size (``file_tile``, level pixels),
    strip sizes are whole numbers of file tiles where the grid allows it.
    """
    if len(tiles) == 0:
        return []
    tile_w, tile_h = file_tile or (None, None)
    side = grid.patch_size * scale  # a tile's side in level pixels
    step = grid.stride * scale
    strip_height = strip_height or STRIP_HEIGHT
    rows_per_strip = _aligned(max(1, int((strip_height - side) // step) + 1), step, tile_h)
    height = (rows_per_strip - 1) * step + side
    cols_per_strip = _aligned(max(1, int((max_region_pixels / height - side) // step) + 1),
                              step, tile_w)
    rows = tiles[:, 1] // grid.stride
    cols = tiles[:, 0] // grid.stride
    band = rows // rows_per_strip
    strips = []
    for sel in np.split(np.arange(len(tiles)), np.flatnonzero(np.diff(band)) + 1):
        used = np.unique(cols[sel])
        for run in np.split(used, np.flatnonzero(np.diff(used) > 2) + 1):
            first = int(run[0]) - int(run[0]) % cols_per_strip  # on the aligned column grid
            for c0 in range(first, int(run[-1]) + 1, cols_per_strip):
                lo, hi = max(c0, int(run[0])), min(c0 + cols_per_strip, int(run[-1]) + 1)
                part = sel[(cols[sel] >= lo) & (cols[sel] < hi)]  # this run's tiles only
                if len(part):
                    strips.append(Strip(path, level, level_downsample, scale, tiles[part],
                                        grid.patch_size))
    return strips


def read_strip(reader: SlideReader, strip: Strip) -> np.ndarray:
    """The strip's patches (K, P, P, 3) uint8, in the strip's tile order.

    When the level must shrink by 2 or more and its decoder can shrink while decoding (JPEG
    tiles read by Pillow: 1/2, 1/4, 1/8 in the DCT domain, a box filter), it does, and
    Lanczos resamples the rest; otherwise Lanczos does it all.
    """
    x0, y0, x1, y1 = strip.box
    s = strip.scale
    r = reader.reduction(strip.level, s) if s >= 2 else 1
    lx0, ly0, lx1, ly1 = x0 * s, y0 * s, x1 * s, y1 * s
    ix0, iy0 = math.floor(lx0 / r) * r, math.floor(ly0 / r) * r
    ix1, iy1 = math.ceil(lx1 / r - 1e-6) * r, math.ceil(ly1 / r - 1e-6) * r
    ds = strip.level_downsample
    x, y, w, h = round(ix0 * ds), round(iy0 * ds), ix1 - ix0, iy1 - iy0
    if s == 1.0:  # the level as is: straight to an array, no resampling
        pixels = reader.read_array(strip.level, x, y, w, h)
    else:
        region = (Image.fromarray(reader.read_reduced(strip.level, x, y, w // r, h // r, r))
                  if r > 1 else reader.read(strip.level, x, y, w, h))
        box = ((lx0 - ix0) / r, (ly0 - iy0) / r, (lx1 - ix0) / r, (ly1 - iy0) / r)
        pixels = np.asarray(region.resize((x1 - x0, y1 - y0), Image.Resampling.LANCZOS,
                                          box=box, reducing_gap=3.0))
    p = strip.patch_size
    offsets = strip.tiles - np.array([x0, y0])
    return np.stack([pixels[y:y + p, x:x + p] for x, y in offsets])


#: Turns a strip's patches into what the caller stores (e.g. encoded artifact chunks); it runs
#: where the strip is read, so with workers that work is parallel and only its result is sent.
Encode = Callable[[np.ndarray], Any]


def load_strip(reader: SlideReader, strip: Strip, encode: Encode | None) -> Any:
    patches = read_strip(reader, strip)
    return patches if encode is None else encode(patches)


class _Deferred:
    """A future's ``result()`` for work done in this process when first asked for."""

    def __init__(self, work: Callable[[], Any]) -> None:
        self.work = work

    def result(self) -> Any:
        return self.work()


def _ready() -> bool:
    return True


class _WorkerSlides:
    """The slide handle of one worker process, reopened when the slide changes."""

    reader: SlideReader | None = None

    @classmethod
    def load(cls, strip: Strip, encode: Encode | None) -> Any:
        if cls.reader is None or cls.reader.path != strip.path:
            if cls.reader is not None:
                cls.reader.close()
            cls.reader = SlideReader(strip.path)
        return load_strip(cls.reader, strip, encode)


class StripReader:
    """Reads strips in order, in this process (``workers=1``) or in worker processes.

    At most ``2 * workers`` strips are in flight, which bounds memory. The pool is created on
    first use and reused across slides; call :meth:`close` (or use ``with``).
    """

    def __init__(self, workers: int = 1) -> None:
        self.workers = max(1, workers)
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=follow_parent, initargs=(os.getpid(),))
        return self._pool

    def iter_read(self, strips: Sequence[Strip], reader: SlideReader,
                  encode: Encode | None = None) -> Iterator[tuple[Strip, Any]]:
        """Yield ``(strip, patches)`` in the order of ``strips``, patches (K, P, P, 3) uint8 or
        what ``encode`` (picklable) made of them; ``reader`` (the caller's open slide) is
        used when there is a single worker."""
        if self.workers == 1:
            for strip in strips:
                yield strip, load_strip(reader, strip, encode)
            return
        load = functools.partial(_WorkerSlides.load, encode=encode)
        yield from zip(strips, ordered_map(self._executor(), load, strips, 2 * self.workers))

    def stream(self, items: Iterable[Any], encode: Encode | None = None
               ) -> Iterator[tuple[Any, Future[Any] | _Deferred | None]]:
        """``(item, future)`` in the order of ``items``, across slides: for a :class:`Strip`
        the future gives its patches, read in the workers with at most ``2 * workers`` in
        flight, so the next slide's first strips are read while this one's last are written;
        anything else (a caller's marker, e.g. "slide i begins") comes back with ``None``.
        With one worker, strips are read here when their result is asked for, with the reader
        of the last marker that carries one (``marker.reader``)."""
        pending: deque[tuple[Any, Future[Any] | _Deferred | None]] = deque()
        reads = 0
        reader: SlideReader | None = None
        load = functools.partial(_WorkerSlides.load, encode=encode)
        for item in items:
            if not isinstance(item, Strip):
                reader = getattr(item, "reader", reader)
                pending.append((item, None))
            elif self.workers == 1:  # read when the caller asks (a dropped strip never is)
                pending.append((item, _Deferred(functools.partial(load_strip, reader, item,
                                                                  encode))))
            else:
                pending.append((item, self._executor().submit(load, item)))
                reads += 1
            while pending and (self.workers == 1 or reads >= 2 * self.workers):
                item, future = pending.popleft()
                reads -= self.workers > 1 and future is not None
                yield item, future
        yield from pending

    def start(self) -> None:
        """Start the worker processes now, in the background: they import while the caller
        opens its first slide and finds its tissue, instead of when the first strip is due."""
        if self.workers > 1:
            pool = self._executor()
            for _ in range(self.workers):
                pool.submit(_ready)

    def reset(self) -> None:
        """Drop the pool (after a worker crashed); a new one starts on next use."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> StripReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
