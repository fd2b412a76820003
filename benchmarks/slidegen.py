"""Build tiled pyramidal JPEG TIFFs from real tissue images, for tests and benchmarks.

The slide is an ellipse of tissue on white glass. Tissue comes from real H&E images in
``../shared/data`` (GlaS, WSSS4LUAD) tiled into a periodic mosaic; when that folder is absent a
generated stain-like texture is used instead. Every level is made from the mosaic downsampled
by its factor, so building a 20,000 px pyramid takes seconds and little memory.

Needs ``tifffile`` (dev extra). JPEG tiles are encoded with Pillow and handed to tifffile as
pre-encoded bytes (tifffile alone would need imagecodecs for JPEG).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MOSAIC = 2048  # side of the periodic tissue mosaic (a power of two times 128)


def real_tissue_images(data: Path = DATA, limit: int = 40) -> list[np.ndarray]:
    """Real H&E images from ../shared/data, or an empty list when it is absent."""
    paths = sorted((data / "glas" / "train" / "images").glob("*.png"))[:limit // 2]
    paths += sorted((data / "wsss4luad" / "dev" / "img").glob("*.png"))[:limit // 2]
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def texture(size: int, seed: int = 0) -> np.ndarray:
    """A stain-like texture (pink stroma, purple nuclei) when no real image is available."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random((size, size)), 6)
    field = (field - field.min()) / (np.ptp(field) + 1e-9)
    nuclei = ndimage.gaussian_filter(rng.random((size, size)), 2) > 0.56
    pink, purple = np.array([230, 150, 190]), np.array([110, 60, 150])
    rgb = pink * (0.8 + 0.2 * field[..., None])
    rgb[nuclei] = purple
    return rgb.clip(0, 255).astype(np.uint8)


def mosaic(images: list[np.ndarray], size: int = MOSAIC, cell: int = 512) -> np.ndarray:
    """A size x size RGB mosaic of ``images``, each resized to a cell (texture when none)."""
    if not images:
        return texture(size)
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    for i, (y, x) in enumerate((y, x) for y in range(0, size, cell) for x in range(0, size, cell)):
        img = Image.fromarray(images[i % len(images)]).resize((cell, cell), Image.Resampling.BILINEAR)
        canvas[y:y + cell, x:x + cell] = np.asarray(img)[:size - y, :size - x]
    return canvas


def _tiles(level_mosaic: np.ndarray, width: int, height: int, tile: int, quality: int) -> Iterator[bytes]:
    """JPEG tiles of one level: the mosaic repeated, tissue inside an ellipse, glass outside."""
    m = level_mosaic.shape[0]
    cx, cy = width / 2, height / 2
    rx, ry = width * 0.42, height * 0.40
    for ty in range(0, height, tile):
        for tx in range(0, width, tile):
            ys = (np.arange(ty, ty + tile) % m)[:, None]
            xs = (np.arange(tx, tx + tile) % m)[None, :]
            block = level_mosaic[ys, xs]
            yy, xx = np.mgrid[ty:ty + tile, tx:tx + tile]
            glass = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 > 1
            glass |= (xx >= width) | (yy >= height)
            block[glass] = 243
            buffer = io.BytesIO()
            Image.fromarray(block).save(buffer, "JPEG", quality=quality)
            yield buffer.getvalue()


def build_pyramid_tiff(path: Path, width: int, height: int, mpp: float | None = 0.5, *,
                       tile: int = 256, min_level_side: int = 1024, factor: int = 2,
                       quality: int = 85, images: list[np.ndarray] | None = None) -> Path:
    """Write a tiled pyramidal JPEG TIFF OpenSlide reads as generic-tiff.

    Levels shrink by ``factor`` until the longer side is below ``min_level_side``; ``mpp``
    None writes no resolution (a slide that needs --source-mpp).
    """
    import tifffile

    # tifffile looks up an encoder even for pre-encoded tiles; give it one that refuses work
    codecs = tifffile.TIFF.COMPRESSORS._codecs  # noqa: SLF001 - documented workaround
    codecs.setdefault(7, _pre_encoded_only)
    base = mosaic(real_tissue_images() if images is None else images)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
        level, w, h = 0, width, height
        while True:
            f = factor ** level
            level_mosaic = np.asarray(Image.fromarray(base).reduce(f)) if f > 1 else base
            options: dict[str, object] = {}
            if level == 0 and mpp is not None:
                options = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
            if level > 0:
                options["subfiletype"] = 1
            tw.write(_tiles(level_mosaic, w, h, tile, quality), shape=(h, w, 3),
                     dtype="uint8", tile=(tile, tile), compression="jpeg", photometric="rgb",
                     metadata=None, **options)
            if max(w, h) // factor < min_level_side or MOSAIC % (f * factor):
                break
            level, w, h = level + 1, w // factor, h // factor
    tmp.replace(path)
    return path


def _pre_encoded_only(data: object, **kwargs: object) -> bytes:
    raise RuntimeError("slidegen hands tifffile pre-encoded JPEG tiles only")
