"""Reading images and masks with errors that name the file."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from histoseg_cli.core.atomic import write_bytes_atomic
from histoseg_cli.core.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
#: PNG text key of label PNGs holding their class names (a JSON list).
CLASSES_KEY = "histoseg:classes"


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))


def read_rgb(path: Path) -> np.ndarray:
    """An (H, W, 3) uint8 array; alpha is dropped, greyscale expanded."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise InputError(path, f"unreadable image ({err.__class__.__name__}); expected an RGB "
                         "PNG/JPEG/TIFF") from None


def read_mask(path: Path) -> np.ndarray:
    """An (H, W) uint8 array of class indices from a palette ("P") or greyscale PNG."""
    try:
        with Image.open(path) as im:
            if im.mode in ("P", "L", "I;16", "I"):
                mask = np.asarray(im)
            elif im.mode == "1":
                mask = np.asarray(im, dtype=np.uint8)
            else:
                raise InputError(path, f"mask has mode {im.mode}; expected a palette (P) or "
                                 "greyscale (L) PNG of class indices")
    except (UnidentifiedImageError, OSError) as err:
        raise InputError(path, f"unreadable mask ({err.__class__.__name__})") from None
    if mask.max(initial=0) > 255:
        raise InputError(path, "mask values above 255; expected class indices")
    return mask.astype(np.uint8)


def save_png(path: Path, image: np.ndarray | Image.Image,
             text: dict[str, str] | None = None) -> Path:
    """Write an RGB (H, W, 3) uint8 array or a PIL image as PNG (with optional text chunks),
    atomically."""
    im = image if isinstance(image, Image.Image) else Image.fromarray(image)
    info = None
    if text:
        info = PngImagePlugin.PngInfo()
        for key, value in text.items():
            info.add_text(key, value)
    buffer = io.BytesIO()
    im.save(buffer, format="PNG", pnginfo=info)
    return write_bytes_atomic(path, buffer.getvalue())


def save_palette_png(path: Path, mask: np.ndarray, palette: np.ndarray,
                     text: dict[str, str] | None = None) -> Path:
    """Write class indices as a palette PNG (colours from ``palette`` rows), atomically."""
    im = Image.fromarray(mask.astype(np.uint8), mode="P")
    flat = np.zeros((256, 3), dtype=np.uint8)
    flat[: len(palette)] = palette[:256]
    im.putpalette(flat.flatten().tolist())
    return save_png(path, im, text)


def save_label_png(path: Path, labels: np.ndarray, palette: np.ndarray,
                   class_names: list[str], text: dict[str, str] | None = None) -> Path:
    """Labels (background = C) as a palette PNG that names its classes (and any other
    ``text``), atomically."""
    return save_palette_png(path, labels, palette,
                            {CLASSES_KEY: json.dumps(list(class_names)), **(text or {})})


def read_png_text(path: Path, key: str) -> str | None:
    """A text chunk of a PNG, or None (no such chunk, not a PNG)."""
    try:
        with Image.open(path) as im:
            value = im.info.get(key)
    except (UnidentifiedImageError, OSError):
        return None
    return value if isinstance(value, str) else None


def read_label_classes(path: Path) -> list[str] | None:
    """The class names a label PNG records (written by :func:`save_label_png`), else None."""
    try:
        with Image.open(path) as im:
            text = im.info.get(CLASSES_KEY)
    except (UnidentifiedImageError, OSError):
        return None
    try:
        names = json.loads(text) if text else None
    except ValueError:
        return None
    return [str(n) for n in names] if isinstance(names, list) else None
