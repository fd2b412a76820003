"""Finding a dataset folder's splits and detecting which registered layout it has.

The layouts themselves (class names, colours, split folder names, label style) are registered
in :mod:`histoseg_cli.core.data.layouts`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from histoseg_cli.core.data.layouts import DATASETS, DatasetSpec
from histoseg_cli.core.errors import InputError, UsageError
from histoseg_cli.core.imageio import IMAGE_SUFFIXES, list_images


@dataclass(frozen=True)
class Split:
    """One split of a dataset folder: labelled patches, or images with masks."""

    name: str
    images: Path
    masks: Path | None = None

    @property
    def is_labelled(self) -> bool:
        return self.masks is None


def classify_split(folder: Path, name: str | None = None) -> Split | None:
    """``folder`` as a split: ``img/`` + ``mask/`` inside, or images directly inside."""
    name = name or folder.name
    if (folder / "img").is_dir() and (folder / "mask").is_dir():
        return Split(name, folder / "img", folder / "mask")
    if folder.is_dir() and list_images(folder):
        return Split(name, folder)
    return None


def find_splits(root: Path, spec: DatasetSpec) -> list[Split]:
    """The splits under ``root``: a split folder itself, or a dataset root holding several."""
    if not root.exists():
        raise InputError(root, "no such folder")
    if not root.is_dir():
        raise InputError(root, f"not a folder; expected a {spec.name} dataset folder")
    own = classify_split(root)
    if own is not None:
        return [own]
    splits = []
    for sub in (*spec.train_dirs, *spec.mask_splits):
        split = classify_split(root / sub, "train" if sub in spec.train_dirs else sub)
        if split is not None and all(s.name != split.name for s in splits):
            splits.append(split)
    if not splits:
        raise InputError(root, f"no {spec.name} layout found; expected images with labels in "
                         f"their names, img/ + mask/ folders, or split folders "
                         f"({', '.join((*spec.train_dirs, *spec.mask_splits))})")
    return splits


def _training_images(root: Path) -> list[Path]:
    """Images of the training split under ``root`` (the folder itself or a train folder)."""
    for folder in (root, *(root / d for d in ("train", "training"))):
        if folder.is_dir() and not (folder / "img").is_dir():
            images = list_images(folder)
            if images:
                return images
    return []


def looked_for() -> str:
    """What layout detection looks for, for messages."""
    return "; ".join(f"{s.name}: names ending in {s.label_example}"
                     for s in DATASETS.values() if s.label_pattern)


def find_layout(root: Path) -> DatasetSpec | None:
    """The registered layout whose label style the training file names under ``root`` use,
    or ``None`` when none fits (or there are no training images to tell from).

    More than one fitting layout is a ``UsageError``: the folder needs ``--dataset``.
    """
    if not root.is_dir():
        raise InputError(root, "no such folder")
    sample = _training_images(root)[:64]
    fits = [spec for spec in DATASETS.values() if sample and spec.label_pattern and all(
        re.search(spec.label_pattern + r"[^\[\]]*$", p.stem) for p in sample)]
    if len(fits) > 1:
        raise UsageError(f"{root}: cannot tell the dataset layout (several layouts fit: "
                         f"{', '.join(s.name for s in fits)}); name it with {{dataset}}")
    return fits[0] if fits else None


def detect_dataset(root: Path) -> DatasetSpec:
    """:func:`find_layout`, for inputs that must be a dataset folder: no fitting layout is a
    ``UsageError`` naming the folder and saying what was looked for."""
    spec = find_layout(root)
    if spec is None and not any(p.suffix.lower() in IMAGE_SUFFIXES for p in root.rglob("*")):
        raise InputError(root, "holds no artifacts and no images (expected patches artifacts "
                         ".h5, or a patch-dataset folder)")
    if spec is None:
        found = "no layout fits" if _training_images(root) else "no labelled training images"
        raise UsageError(f"{root}: cannot tell the dataset layout ({found}; looked for "
                         f"{looked_for()}); name it with {{dataset}}, or, for images with "
                         "pixel masks, cut them into an artifact first (tile IMAGES {masks} "
                         "MASKS {classes} NAMES) and pass that")
    return spec
