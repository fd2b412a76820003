"""Turning patch datasets and pixel-annotated image folders into artifacts.

Two sources: a folder of labelled patches (labels in file names), and images with masks, cut
into patches whose multi-hot labels are derived from the masks. The second turns any
pixel-annotated set into weakly supervised data; its masks stay in the artifact for evaluation.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from histoseg_cli.core.data.format import ArtifactMeta

from histoseg_cli.core.data.writer import ArtifactWriter
from histoseg_cli.core.data.datasets import Split
from histoseg_cli.core.data.layouts import DatasetSpec
from histoseg_cli.core.errors import InputError
from histoseg_cli.core.imageio import list_images, read_mask, read_rgb
from histoseg_cli.core.data.labels import labels_from_masks, parse_label, strip_label
from histoseg_cli.core.parallel import ordered_map
from histoseg_cli.core.progress import SILENT, Reporter

log = logging.getLogger("histoseg")

PAD_RGB = 255  # padding looks like glass: white, and it is background in the mask


@dataclass(frozen=True)
class TileConfig:
    """How images with masks are cut into labelled patches."""

    patch_size: int | None = 224  # None: a dataset's own patch size
    stride: int | None = None  # None: half the patch size
    min_fraction: float = 0.05  # a class is present if it covers more than this of the patch
    keep_empty: bool = False  # keep patches in which no class is present
    workers: int = 4  # threads decoding images


@dataclass
class TileSummary:
    """What an import produced."""

    output: Path
    patches: int
    images: int
    dropped_empty: int = 0
    label_patterns: int = 0

    def as_dict(self) -> dict[str, object]:
        return {"output": str(self.output), "patches": self.patches, "images": self.images,
                "dropped_empty": self.dropped_empty, "label_patterns": self.label_patterns}


def grid_positions(length: int, patch: int, stride: int) -> list[int]:
    """Patch origins along one axis: every ``stride``, plus one flush with the far edge."""
    if length <= patch:
        return [0]
    positions = list(range(0, length - patch + 1, stride))
    if positions[-1] != length - patch:
        positions.append(length - patch)
    return positions


def pad_to(array: np.ndarray, size: int, value: int) -> np.ndarray:
    """Pad the first two axes at the bottom/right up to ``size``."""
    h, w = array.shape[:2]
    if h >= size and w >= size:
        return array
    pad = [(0, max(0, size - h)), (0, max(0, size - w))] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, pad, constant_values=value)


def cut_patches(image: np.ndarray, mask: np.ndarray, num_classes: int, patch: int,
                stride: int) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """Yield ``(x, y, image_patch, mask_patch)`` over a grid covering the image.

    Images smaller than a patch are padded (white pixels, background mask), never dropped.
    """
    image = pad_to(image, patch, PAD_RGB)
    mask = pad_to(mask, patch, num_classes)
    h, w = mask.shape
    for y in grid_positions(h, patch, stride):
        for x in grid_positions(w, patch, stride):
            yield x, y, image[y:y + patch, x:x + patch], mask[y:y + patch, x:x + patch]


def _find_mask(mask_dir: Path, image: Path) -> Path:
    for suffix in (".png", image.suffix, ".tif", ".tiff", ".bmp"):
        candidate = mask_dir / f"{image.stem}{suffix}"
        if candidate.exists():
            return candidate
    raise InputError(image, f"no mask with the same name in {mask_dir}")


def _load_pair(image_path: Path, mask_path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = read_rgb(image_path)
    mask = read_mask(mask_path)
    if mask.shape != image.shape[:2]:
        raise InputError(mask_path, f"mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                         f"{image.shape[1]}x{image.shape[0]}; expected the same size")
    return image, mask


def _check_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise InputError(folder, "no such folder (expected a folder of images)")
    images = list_images(folder)
    if not images:
        raise InputError(folder, "no images found (expected .png/.jpg/.tif files)")
    return images


def tile_masked_images(
    image_dir: Path,
    mask_dir: Path,
    output: Path,
    class_names: Sequence[str],
    config: TileConfig,
    *,
    palette: np.ndarray | None = None,
    source: str = "",
    extra: dict[str, object] | None = None,
    reporter: Reporter = SILENT,
) -> TileSummary:
    """Cut every image of ``image_dir`` (mask of the same name in ``mask_dir``) into patches."""
    images = _check_images(image_dir)
    if not mask_dir.is_dir():
        raise InputError(mask_dir, "no such folder (expected a folder of masks)")
    pairs = [(img, _find_mask(mask_dir, img)) for img in images]
    c = len(class_names)
    p = config.patch_size or 224
    stride = config.stride or max(1, p // 2)
    meta = ArtifactMeta(class_names=list(class_names), patch_size=p, palette=palette,
                        source=source or str(image_dir), created_by="tile",
                        extra={"stride": stride, "min_fraction": config.min_fraction,
                               "mask_dir": str(mask_dir), **(extra or {})})
    dropped = 0
    patterns: set[bytes] = set()
    with ArtifactWriter(output, meta, labels=True, masks=True, coords=True) as writer, \
            ThreadPoolExecutor(max(1, config.workers)) as pool:
        loaded = ordered_map(pool, lambda pair: _load_pair(*pair), pairs, 2 * config.workers)
        for (img_path, _), (image, mask) in reporter.track(
                zip(pairs, loaded), total=len(pairs), description="tiling", unit="images"):
            cut = list(cut_patches(image, mask, c, p, stride))
            masks = np.stack([m for *_, m in cut])
            labels = labels_from_masks(masks, c, config.min_fraction)
            keep = np.ones(len(cut), bool) if config.keep_empty else labels.any(axis=1)
            dropped += int((~keep).sum())
            if not keep.any():
                continue
            idx = np.flatnonzero(keep)
            patterns.update(labels[i].tobytes() for i in idx)
            writer.append(
                np.stack([cut[i][2] for i in idx]),
                [img_path.stem if len(cut) == 1 else f"{img_path.stem}_{cut[i][0]}_{cut[i][1]}"
                 for i in idx],
                labels=labels[idx], masks=masks[idx],
                coords=np.array([[cut[i][0], cut[i][1]] for i in idx], dtype=np.int64),
            )
        if writer.rows_done == 0:
            raise InputError(image_dir, "no patch contains any class; check {classes} and "
                             "{min_fraction} (mask values >= the class count are background)")
        writer.set_attrs("coords", patch_size=p, patch_level=0, downsample=1.0,
                         patch_size_level0=p)
        n = writer.rows_done
    return TileSummary(output, n, len(pairs), dropped, len(patterns))


def _read_patch(path: Path, size: int | None) -> np.ndarray:
    image = read_rgb(path)
    h, w = image.shape[:2]
    if h != w or (size is not None and h != size):
        want = f"{size}x{size}" if size else "square"
        raise InputError(path, f"patch is {w}x{h}; expected {want} like the other patches")
    return image


def tile_labelled_patches(
    folder: Path,
    output: Path,
    spec: DatasetSpec,
    *,
    workers: int = 4,
    reporter: Reporter = SILENT,
    extra: dict[str, Any] | None = None,
) -> TileSummary:
    """Store a folder of patches whose file names carry multi-hot labels."""
    images = _check_images(folder)
    c = len(spec.class_names)
    labels = np.stack([parse_label(path, c) for path in images])  # fail before writing
    size = _read_patch(images[0], None).shape[0]
    meta = ArtifactMeta(class_names=list(spec.class_names), patch_size=size,
                        palette=spec.palette_array(), source=str(folder), created_by="tile",
                        extra={"dataset": spec.name, "background": spec.background,
                               **(extra or {})})
    batch = 64
    with ArtifactWriter(output, meta, labels=True) as writer, \
            ThreadPoolExecutor(max(1, workers)) as pool:
        patches = ordered_map(pool, lambda p: _read_patch(p, size), images, 4 * workers)
        chunk: list[np.ndarray] = []
        for i, patch in enumerate(reporter.track(patches, total=len(images),
                                                 description="importing", unit="patches")):
            chunk.append(patch)
            if len(chunk) == batch or i == len(images) - 1:
                start = i + 1 - len(chunk)
                writer.append(np.stack(chunk), [strip_label(p) for p in images[start:i + 1]],
                              labels=labels[start:i + 1])
                chunk = []
    patterns = len({row.tobytes() for row in labels})
    return TileSummary(output, len(images), len(images), 0, patterns)


def tile_split(split: Split, output: Path, spec: DatasetSpec, config: TileConfig,
               reporter: Reporter = SILENT, extra: dict[str, Any] | None = None
               ) -> TileSummary:
    """Import one split of a registered dataset layout (``extra``: more metadata to record)."""
    if split.is_labelled:
        return tile_labelled_patches(split.images, output, spec, workers=config.workers,
                                     reporter=reporter, extra=extra)
    assert split.masks is not None
    if config.patch_size is None:  # pixel-labelled patches of the dataset: keep them whole
        side = read_rgb(_check_images(split.images)[0]).shape[0]
        config = replace(config, patch_size=side, stride=side, keep_empty=True)
    return tile_masked_images(split.images, split.masks, output, spec.class_names, config,
                              palette=spec.palette_array(), reporter=reporter,
                              source=str(split.images.parent),
                              extra={"dataset": spec.name, "background": spec.background,
                                     **(extra or {})})
