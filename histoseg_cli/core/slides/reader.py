"""One small interface over OpenSlide and plain images: geometry, resolution, RGB regions.

Everything above this module sees a :class:`SlideReader`; whether pixels come from an OpenSlide
pyramid (svs, ndpi, mrxs, tiled TIFF, DICOM, ...) or from a plain PNG/JPEG/TIFF decoded by PIL
(OpenSlide's ``ImageSlide``) is decided here once, when the file is opened, and so is, per
pyramid level, which decoder reads it: JPEG-tiled levels of TIFF-family slides (generic TIFF,
Aperio) through :mod:`jpegtiff` (Pillow), everything else through OpenSlide.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
import openslide
from PIL import Image, UnidentifiedImageError

from histoseg_cli.core.errors import InputError
from histoseg_cli.core.slides.jpegtiff import VENDORS as JPEG_TIFF_VENDORS
from histoseg_cli.core.slides.jpegtiff import JpegTiffLevel, JpegTiffPyramid

#: File name endings tried as slides (OpenSlide formats plus plain images).
SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".tif", ".tiff", ".scn", ".bif", ".vms", ".vmu",
                  ".svslide", ".dcm", ".png", ".jpg", ".jpeg")
PLAIN_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")

#: Largest region (pixels) read at once when a caller asks for more, e.g. thumbnails of a
#: slide without a low-resolution level: bounds memory whatever the slide size.
MAX_REGION_PIXELS = 16 * 1024 * 1024


@dataclass(frozen=True)
class SlideInfo:
    """What a slide says about itself."""

    path: Path
    vendor: str  # OpenSlide vendor, or "image" for plain images
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: float | None  # micrometres per pixel at level 0, when recorded
    objective_power: float | None  # scanner magnification of level 0, when recorded
    #: (width, height) of the file's tiles per level, where the format records them
    level_tiles: tuple[tuple[int, int] | None, ...] = ()

    def tile_size(self, level: int) -> tuple[int, int] | None:
        return self.level_tiles[level] if level < len(self.level_tiles) else None

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)


_T = TypeVar("_T")


def _float_property(props: dict[str, str], key: str) -> float | None:
    try:
        value = float(props[key])
    except (KeyError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def _tile_size(props: dict[str, str], level: int) -> tuple[int, int] | None:
    w = _float_property(props, f"openslide.level[{level}].tile-width")
    h = _float_property(props, f"openslide.level[{level}].tile-height")
    return (int(w), int(h)) if w and h else None


def _describe(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


class LevelSource(Protocol):
    """Reads RGB regions of one pyramid level; (x0, y0) in level-0 pixels, size in level
    pixels; areas outside the scanned region come out in the slide's background colour."""

    name: str

    def read(self, x0: int, y0: int, width: int, height: int) -> Image.Image: ...

    def read_array(self, x0: int, y0: int, width: int, height: int) -> np.ndarray: ...

    def reduction(self, scale: float) -> int:
        """The integer factor (<= scale) by which the source can shrink while decoding."""
        ...

    def read_reduced(self, x0: int, y0: int, width: int, height: int,
                     reduce: int) -> np.ndarray:
        """The level shrunk by ``reduce`` (a :meth:`reduction`); (x0, y0) in level-0 pixels
        of a multiple of ``reduce`` level pixels, size in shrunk pixels."""
        ...


class OpenSlideSource:
    """Any level of any format OpenSlide reads (premultiplied ARGB, flattened to RGB)."""

    name = "openslide"

    def __init__(self, slide: openslide.AbstractSlide, level: int,
                 background: tuple[int, ...]) -> None:
        self._slide, self._level, self._background = slide, level, background

    def _flatten(self, rgba: Image.Image) -> Image.Image:
        """RGB with transparent areas (outside the scanned region) in the background colour."""
        flat = Image.new("RGB", rgba.size, self._background)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat

    def read(self, x0: int, y0: int, width: int, height: int) -> Image.Image:
        rgba = self._slide.read_region((x0, y0), self._level, (width, height))
        if rgba.mode == "RGBA" and rgba.getchannel("A").getextrema()[0] < 255:
            return self._flatten(rgba)
        return rgba.convert("RGB")

    def read_array(self, x0: int, y0: int, width: int, height: int) -> np.ndarray:
        """A view of the RGBA pixels: one copy less than converting to RGB first."""
        rgba = self._slide.read_region((x0, y0), self._level, (width, height))
        if rgba.mode != "RGBA":
            return np.asarray(rgba.convert("RGB"))
        pixels = np.asarray(rgba)
        if pixels[..., 3].min() < 255:
            return np.asarray(self._flatten(rgba))
        return pixels[..., :3]

    def reduction(self, scale: float) -> int:
        return 1  # OpenSlide decodes whole pixels only

    def read_reduced(self, x0: int, y0: int, width: int, height: int,
                     reduce: int) -> np.ndarray:
        return self.read_array(x0, y0, width, height)


class JpegTiffSource:
    """A JPEG-tiled TIFF page decoded by Pillow (see :mod:`jpegtiff`): same pixels as
    OpenSlide, about 3x less CPU."""

    name = "jpeg-tiff"

    def __init__(self, level: JpegTiffLevel, downsample: float,
                 background: tuple[int, ...]) -> None:
        self._level, self._downsample, self._background = level, downsample, background

    def read_array(self, x0: int, y0: int, width: int, height: int) -> np.ndarray:
        # callers pass level-0 points that are level pixels times the downsample, rounded
        return self._level.read(round(x0 / self._downsample), round(y0 / self._downsample),
                                width, height, self._background)

    def read(self, x0: int, y0: int, width: int, height: int) -> Image.Image:
        return Image.fromarray(self.read_array(x0, y0, width, height))

    def reduction(self, scale: float) -> int:
        return self._level.reduction(scale)

    def read_reduced(self, x0: int, y0: int, width: int, height: int,
                     reduce: int) -> np.ndarray:
        return self._level.read(round(x0 / self._downsample) // reduce,
                                round(y0 / self._downsample) // reduce, width, height,
                                self._background, reduce)


#: OpenSlide vendor -> opener of the levels read without OpenSlide (None: none qualify).
FAST_PYRAMIDS: dict[str, Callable[[Path, tuple[tuple[int, int], ...]],
                                  JpegTiffPyramid | None]] = {
    vendor: JpegTiffPyramid.open for vendor in JPEG_TIFF_VENDORS}


class SlideReader:
    """An open slide; reads RGB regions (transparent areas become white)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._slide = self._open()
        try:
            self._describe()
        except BaseException:
            self._slide.close()
            raise

    def _describe(self) -> None:
        """Resolution, levels and pixel sources of the open slide."""
        props = dict(self._slide.properties)
        mpp_x = _float_property(props, openslide.PROPERTY_NAME_MPP_X)
        mpp_y = _float_property(props, openslide.PROPERTY_NAME_MPP_Y)
        self.info = SlideInfo(
            path=self.path,
            vendor=props.get(openslide.PROPERTY_NAME_VENDOR, "image"),
            level_dimensions=tuple(tuple(d) for d in self._slide.level_dimensions),
            level_downsamples=tuple(float(d) for d in self._slide.level_downsamples),
            mpp=(mpp_x + mpp_y) / 2 if mpp_x and mpp_y else mpp_x or mpp_y,
            objective_power=_float_property(props, openslide.PROPERTY_NAME_OBJECTIVE_POWER),
            level_tiles=tuple(_tile_size(props, i) for i in range(self._slide.level_count)),
        )
        background = props.get(openslide.PROPERTY_NAME_BACKGROUND_COLOR, "FFFFFF")
        try:
            self._background = tuple(bytes.fromhex(background))[:3]
        except ValueError:
            self._background = (255, 255, 255)
        self._fast = FAST_PYRAMIDS[self.info.vendor](self.path, self.info.level_dimensions) \
            if self.info.vendor in FAST_PYRAMIDS else None
        fast_levels = self._fast.levels if self._fast is not None else {}
        self._levels: tuple[LevelSource, ...] = tuple(
            JpegTiffSource(fast_levels[i], ds, self._background) if i in fast_levels
            else OpenSlideSource(self._slide, i, self._background)
            for i, ds in enumerate(self.info.level_downsamples))

    def _open(self) -> openslide.AbstractSlide:
        path = self.path
        if not path.is_file():
            raise InputError(path, "no such file (expected a slide)")
        try:
            return openslide.OpenSlide(path)
        except openslide.OpenSlideUnsupportedFormatError:
            if path.suffix.lower() not in PLAIN_SUFFIXES:
                raise InputError(path, "unsupported or corrupt slide: OpenSlide cannot read it "
                                 f"(expected one of {', '.join(SLIDE_SUFFIXES)})") from None
        except openslide.OpenSlideError as err:
            raise InputError(path, f"corrupt slide ({_describe(err)})") from None
        try:
            return openslide.ImageSlide(path)
        except Image.DecompressionBombError:
            raise InputError(path, "plain image too large to decode whole; convert it to a "
                             "tiled pyramidal TIFF (e.g. vips tiffsave --tile --pyramid)") from None
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise InputError(path, f"unreadable image ({_describe(err)}); expected a slide or "
                             "an RGB PNG/JPEG/TIFF") from None

    def read(self, level: int, x0: int, y0: int, width: int, height: int) -> Image.Image:
        """RGB region of ``width`` x ``height`` pixels of ``level`` at level-0 point (x0, y0)."""
        return self._guarded(self._levels[level].read, level, x0, y0, width, height)

    def read_array(self, level: int, x0: int, y0: int, width: int, height: int) -> np.ndarray:
        """:meth:`read` as an (H, W, 3) uint8 array (without an intermediate RGB image)."""
        return self._guarded(self._levels[level].read_array, level, x0, y0, width, height)

    def reduction(self, level: int, scale: float) -> int:
        """By how much ``level`` can be shrunk while decoding (1, or 2/4/8 for JPEG tiles
        read by Pillow), when the caller will downsample it by ``scale`` anyway."""
        return self._levels[level].reduction(scale)

    def read_reduced(self, level: int, x0: int, y0: int, width: int, height: int,
                     reduce: int) -> np.ndarray:
        """(H, W, 3) region of ``level`` shrunk by ``reduce`` (from :meth:`reduction`) at
        level-0 point (x0, y0), which lies on a multiple of ``reduce`` level pixels; the
        size is in shrunk pixels."""
        return self._guarded(partial(self._levels[level].read_reduced, reduce=reduce), level,
                             x0, y0, width, height)

    def pixel_source(self, level: int) -> str:
        """Which decoder reads ``level`` ("openslide" or "jpeg-tiff"), for the record."""
        return self._levels[level].name

    def _guarded(self, read: Callable[[int, int, int, int], _T], level: int, x0: int, y0: int,
                 width: int, height: int) -> _T:
        try:
            return read(int(x0), int(y0), int(width), int(height))
        except (openslide.OpenSlideError, OSError, ValueError) as err:
            raise InputError(self.path, f"unreadable region ({width}x{height} px of level "
                             f"{level} at {x0},{y0}): {_describe(err)}; the file may be "
                             "corrupt or truncated") from None

    def thumbnail(self, max_side: int) -> np.ndarray:
        """An RGB overview (H, W, 3) whose longer side is at most ``max_side``, covering the
        whole slide. Read in bands from the coarsest level fine enough, so a slide without
        low-resolution levels never has a whole level in memory."""
        w0, h0 = self.info.dimensions
        scale0 = max(1.0, max(w0, h0) / max_side)  # level-0 pixels per thumbnail pixel
        level = max(i for i, d in enumerate(self.info.level_downsamples) if d <= scale0 * 1.01)
        ds = self.info.level_downsamples[level]
        lw, lh = self.info.level_dimensions[level]
        s = scale0 / ds  # level pixels per thumbnail pixel
        tw, th = max(1, round(w0 / scale0)), max(1, round(h0 / scale0))
        band = max(1, int(MAX_REGION_PIXELS // max(1, lw) / s))  # thumbnail rows per band
        rows = []
        for t0 in range(0, th, band):
            t1 = min(th, t0 + band)
            ly0, ly1 = t0 * s, min(lh, t1 * s)
            iy0, iy1 = int(ly0), min(lh, math.ceil(ly1))
            region = self.read(level, 0, round(iy0 * ds), lw, max(1, iy1 - iy0))
            box = (0.0, ly0 - iy0, min(lw, tw * s), max(ly0 - iy0 + 1e-3, ly1 - iy0))
            rows.append(np.asarray(region.resize((tw, t1 - t0), Image.Resampling.BOX, box=box)))
        return np.concatenate(rows)

    def close(self) -> None:
        if self._fast is not None:
            self._fast.close()
        self._slide.close()

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
