"""What a prediction is shown as: colour overlays with a legend, area tables.

Label PNGs themselves are written by ``imageio.save_label_png`` (palette images whose indices
are the labels, class names in a text chunk), which ``eval`` reads back.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from histoseg_cli.core.atomic import write_csv_atomic
from histoseg_cli.core.imageio import save_png

#: Weight of the label colour in an overlay (the image keeps the rest).
OVERLAY_ALPHA = 0.45


def colourise(image: np.ndarray, labels: np.ndarray, palette: np.ndarray,
              background: int) -> np.ndarray:
    """``image`` (H, W, 3) with each labelled pixel blended toward its class colour
    (background pixels unchanged)."""
    colours = palette[np.minimum(labels, len(palette) - 1)].astype(np.float32)
    blend = image.astype(np.float32) * (1 - OVERLAY_ALPHA) + colours * OVERLAY_ALPHA
    keep = (labels >= background)[..., None]
    return np.where(keep, image, blend.round()).astype(np.uint8)


def add_legend(image: np.ndarray, class_names: list[str], palette: np.ndarray,
               counts: np.ndarray | None = None) -> Image.Image:
    """``image`` with a legend strip on the right: a swatch and name per class (and its share
    of labelled pixels when ``counts`` is given)."""
    font = ImageFont.load_default()
    rows = [(name, palette[i]) for i, name in enumerate(class_names)]
    total = float(counts[:len(class_names)].sum()) if counts is not None else 0.0
    texts = [name if not total else f"{name} {counts[i] / total:.0%}"
             for i, (name, _) in enumerate(rows)]
    line = 16
    width = 24 + max(int(font.getlength(t)) for t in texts) + 8
    h, w = image.shape[:2]
    canvas = Image.new("RGB", (w + width, max(h, line * len(rows) + 8)), (255, 255, 255))
    canvas.paste(Image.fromarray(image), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, (text, (_, colour)) in enumerate(zip(texts, rows)):
        y = 4 + i * line
        draw.rectangle((w + 4, y + 2, w + 16, y + 12), fill=tuple(int(v) for v in colour),
                       outline=(0, 0, 0))
        draw.text((w + 22, y), text, fill=(0, 0, 0), font=font)
    return canvas


def save_overlay(path: Path, image: np.ndarray, labels: np.ndarray, palette: np.ndarray,
                 class_names: list[str], counts: np.ndarray | None = None) -> Path:
    """The colour overlay of ``labels`` on ``image`` with a legend, as PNG, atomically."""
    return save_png(path, add_legend(colourise(image, labels, palette, len(class_names)),
                                     class_names, palette, counts))


def file_safe(name: str) -> str:
    """A class name as part of a file name (letters, digits, ``._-``; others become ``_``)."""
    return re.sub(r"[^\w.-]+", "_", name).strip("_") or "class"


def save_heatmap(path: Path, image: np.ndarray, probs: np.ndarray, colour: np.ndarray) -> Path:
    """One class's probability (uint8 0-255, same size as ``image``) as the image tinted
    toward the class colour in proportion, as PNG, atomically."""
    alpha = probs.astype(np.float32)[..., None] / 255 * 0.8
    tinted = image.astype(np.float32) * (1 - alpha) + np.asarray(colour, np.float32) * alpha
    return save_png(path, Image.fromarray(tinted.round().astype(np.uint8)))


def class_areas(counts: np.ndarray, class_names: list[str], mpp: float | None
                ) -> list[dict[str, object]]:
    """Area per class (and background): mm^2 when the pixel size is known, else pixels."""
    names = [*class_names, "background"]
    labelled = float(counts[:len(class_names)].sum())
    rows = []
    for name, n in zip(names, counts.tolist()):
        row: dict[str, object] = {"class": name, "pixels": int(n)}
        row["area_mm2"] = float(f"{n * mpp * mpp / 1e6:.6g}") if mpp else None
        row["fraction_of_tissue"] = (round(n / labelled, 6) if labelled and name != "background"
                                     else None)
        rows.append(row)
    return rows


def write_areas_csv(path: Path, rows: list[dict[str, object]]) -> Path:
    """The area table as CSV (empty cells where a value is unknown), atomically."""
    return write_csv_atomic(path, ["class", "pixels", "area_mm2", "fraction_of_tissue"], rows)
