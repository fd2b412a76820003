"""A small synthetic H&E-like dataset in LUAD-HistoSeg layout.

SYNTHETIC: the textures imitate the four LUAD-HistoSeg tissue classes (dense large nuclei for
tumour epithelium, pale debris for necrosis, small dark round nuclei for lymphocytes, pink
fibres for stroma) so the whole pipeline runs anywhere in minutes with no download. Numbers
measured on it say nothing about real tissue.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from histoseg_cli.core.atomic import write_text_atomic
from histoseg_cli.core.data.layouts import get_dataset
from histoseg_cli.core.imageio import save_palette_png, save_png
from histoseg_cli.core.progress import SILENT, Reporter

SPEC = get_dataset("luad")
C = len(SPEC.class_names)
BACKGROUND = C


@dataclass(frozen=True)
class DemoConfig:
    """Size of the synthetic dataset."""

    patch_size: int = 96
    train: int = 240
    val: int = 40
    test: int = 40
    seed: int = 0


def _blobs(rng: np.random.Generator, size: int, per_kpx: float, radius: float) -> np.ndarray:
    """Soft round blobs (nuclei), about ``per_kpx`` per 1000 pixels, values in [0, 1]."""
    field = np.zeros((size, size))
    n = rng.poisson(per_kpx * size * size / 1000)
    field[rng.integers(0, size, n), rng.integers(0, size, n)] = 1.0
    field = ndimage.gaussian_filter(field, radius) * (2 * np.pi * radius**2)
    return np.clip(field * 1.6, 0, 1)


def _mix(a: tuple[int, int, int], b: tuple[int, int, int], t: np.ndarray) -> np.ndarray:
    return np.array(a) * (1 - t[..., None]) + np.array(b) * t[..., None]


def texture(kind: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """An (size, size, 3) float RGB texture for class ``kind`` (LUAD order) or background.

    Tissue stays below grey 200 so the white-background rule of ``cams`` keeps it."""
    noise = ndimage.gaussian_filter(rng.normal(size=(size, size)), 1.0)
    if kind == 0:  # TE: crowded large purple nuclei on purplish cytoplasm
        img = _mix((215, 150, 200), (85, 40, 130), _blobs(rng, size, 6.0, 2.6))
    elif kind == 1:  # NEC: pale pink with scattered small debris
        img = _mix((218, 168, 196), (150, 90, 150), _blobs(rng, size, 3.0, 0.8) * 0.7)
    elif kind == 2:  # LYM: packed small dark round nuclei
        img = _mix((212, 165, 205), (45, 25, 105), _blobs(rng, size, 25.0, 1.2))
    elif kind == 3:  # TAS: oriented pink fibres, few elongated nuclei
        theta = rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:size, 0:size]
        u = xx * np.cos(theta) + yy * np.sin(theta)
        fibres = 0.5 + 0.5 * np.sin(2 * np.pi * u / rng.uniform(5, 9) + 3 * noise)
        img = _mix((245, 165, 195), (195, 80, 135), fibres)
    else:  # glass
        img = np.full((size, size, 3), 246.0)
    return img + noise[..., None] * 6


def layout(classes: list[int], size: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth random regions, one per entry of ``classes``, as a (size, size) index map."""
    if len(classes) == 1:
        return np.full((size, size), classes[0], dtype=np.uint8)
    fields = [ndimage.gaussian_filter(rng.normal(size=(size, size)), size / 6) for _ in classes]
    stack = np.stack(fields)
    stack /= stack.std(axis=(1, 2), keepdims=True) + 1e-8
    return np.asarray(classes, dtype=np.uint8)[stack.argmax(axis=0)]


def make_patch(classes: list[int], size: int, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic patch and its mask containing exactly ``classes`` (background = C)."""
    for _ in range(20):
        mask = layout(classes, size, rng)
        if set(np.unique(mask).tolist()) == set(classes):
            break
    image = np.zeros((size, size, 3))
    for k in classes:
        image = np.where((mask == k)[..., None], texture(k, size, rng), image)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def _random_classes(rng: np.random.Generator, with_background: bool) -> list[int]:
    k = int(rng.choice([1, 2, 3], p=[0.3, 0.5, 0.2]))
    classes = sorted(rng.choice(C, size=k, replace=False).tolist())
    if with_background and rng.random() < 0.25:
        classes.append(BACKGROUND)
    return classes


def write_demo_dataset(root: Path, config: DemoConfig = DemoConfig(),
                       reporter: Reporter = SILENT) -> dict[str, int]:
    """Write train/ (labels in names), val/ and test/ (img/ + palette mask/) under ``root``."""
    rng = np.random.default_rng(config.seed)
    s = config.patch_size
    (root / "train").mkdir(parents=True, exist_ok=True)
    for i in reporter.track(range(config.train), total=config.train, description="train",
                            unit="patches"):
        classes = _random_classes(rng, with_background=False)
        image, _ = make_patch(classes, s, rng)
        flags = " ".join("1" if k in classes else "0" for k in range(C))
        save_png(root / "train" / f"demo{i:05d}-{i * s}-0-[{flags}].png", image)
    palette = SPEC.palette_array()
    for split, count in (("val", config.val), ("test", config.test)):
        (root / split / "img").mkdir(parents=True, exist_ok=True)
        (root / split / "mask").mkdir(parents=True, exist_ok=True)
        for i in reporter.track(range(count), total=count, description=split, unit="patches"):
            image, mask = make_patch(_random_classes(rng, with_background=True), s, rng)
            name = f"demo{split}{i:05d}-{i * s}-0.png"
            save_png(root / split / "img" / name, image)
            save_palette_png(root / split / "mask" / name, mask, palette)
    readme = (
        "SYNTHETIC demo data written by `histoseg demo-data` (LUAD-HistoSeg layout).\n"
        "Textures imitate TE, NEC, LYM, TAS; masks: 0 TE, 1 NEC, 2 LYM, 3 TAS, 4 background.\n"
        "Not real tissue: results on it say nothing about real performance.\n"
    )
    write_text_atomic(root / "README.txt", readme)
    return {"train": config.train, "val": config.val, "test": config.test}
