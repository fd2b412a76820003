"""Training data: artifacts (or dataset folders imported on the fly) -> device batches.

Workers read uint8 patches from the artifact (each opens its own HDF5 handle) into pinned
memory; flips, colour jitter and normalisation run on the training device on whole batches, so
the host does no per-pixel work and transfers a quarter of the bytes of float inputs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision.transforms.v2 import functional as TF

from histoseg_cli.core.artifact import Artifact
from histoseg_cli.core.datasets import DatasetSpec, Split, find_splits, get_dataset
from histoseg_cli.core.errors import InputError, UsageError
from histoseg_cli.core.progress import SILENT, Reporter
from histoseg_cli.core.tiling import TileConfig, labels_from_masks, tile_split

log = logging.getLogger("histoseg")

@dataclass(frozen=True)
class DataSources:
    """Artifacts to train (and validate) on, after any import."""

    train: Path
    val: Path | None
    background: str | None  # CAM background rule of the dataset, when known
    class_names: tuple[str, ...] = ()  # of the training artifact, once it has been validated


def _import_split(split: Split, spec: DatasetSpec, out: Path, workers: int,
                  reporter: Reporter) -> Path:
    if out.is_file():
        try:
            with Artifact(out) as done:
                meta = done.meta
            origin = split.images if split.is_labelled else split.images.parent
            if (Path(meta.source).resolve() == origin.resolve()
                    and meta.extra.get("dataset") == spec.name):
                log.info("reusing imported %s", out)
                return out
            log.info("re-importing %s (it came from %s)", out, meta.source)
        except InputError:
            log.info("re-importing %s (incomplete or invalid)", out)
    tile_split(split, out, spec, TileConfig(patch_size=None, workers=workers), reporter)
    return out


def prepare_sources(data: str, val: str | None, dataset: str | None, run_dir: Path,
                    workers: int = 4, reporter: Reporter = SILENT) -> DataSources:
    """Resolve ``data``/``val`` to artifacts, importing dataset folders into RUN_DIR/data/.

    A dataset root holding a training split and ``val/`` also yields the validation artifact
    unless ``val`` is given. Imports already complete in RUN_DIR/data/ are reused.
    """
    spec = get_dataset(dataset) if dataset else None
    data_path = Path(data)
    auto_val: Path | None = None
    if data_path.is_dir():
        if spec is None:
            raise UsageError(f"{data_path} is a folder: say which layout it has with "
                             "--dataset luad|bcss (or pass an artifact .h5)")
        splits = find_splits(data_path, spec)
        by_name = {s.name: s for s in splits}
        train_split = splits[0] if len(splits) == 1 else by_name.get("train")
        if train_split is None:
            raise InputError(data_path, f"no training split found (expected one of "
                             f"{', '.join(spec.train_dirs)})")
        train = _import_split(train_split, spec, run_dir / "data" / "train.h5", workers, reporter)
        if val is None and len(splits) > 1 and "val" in by_name:
            auto_val = _import_split(by_name["val"], spec, run_dir / "data" / "val.h5", workers,
                                     reporter)
            log.info("validating on %s (the dataset's val split)", by_name["val"].images.parent)
    else:
        train = data_path
    val_path: Path | None = auto_val
    if val is not None:
        vp = Path(val)
        if vp.is_dir():
            if spec is None:
                raise UsageError(f"--val {vp} is a folder: say its layout with --dataset")
            splits = find_splits(vp, spec)
            val_path = _import_split(splits[0], spec, run_dir / "data" / f"val-{vp.name}.h5",
                                     workers, reporter)
        else:
            val_path = vp
    background = spec.background if spec else None
    return DataSources(train, val_path, background)


def train_labels(artifact: Artifact) -> np.ndarray:
    """The (N, C) labels of a training artifact, with clear errors for unusable data."""
    if len(artifact) == 0:
        raise InputError(artifact.path, "holds no patches; expected a non-empty training set")
    if not artifact.has_labels:
        raise InputError(artifact.path, "has no 'labels' dataset; expected patch-level labels "
                         "(import labelled patches with `histoseg tile`)")
    return artifact.labels().astype(np.float32)


def val_labels(artifact: Artifact, min_fraction: float = 0.05) -> np.ndarray:
    """Validation labels: stored ones, or derived from the masks like ``tile`` does."""
    if len(artifact) == 0:
        raise InputError(artifact.path, "holds no patches; expected a validation set")
    if artifact.has_labels:
        return artifact.labels().astype(np.float32)
    if artifact.has_masks:
        masks = artifact.dataset("masks")[:]
        return labels_from_masks(masks, artifact.num_classes, min_fraction).astype(np.float32)
    raise InputError(artifact.path, "has neither 'labels' nor 'masks'; expected a labelled "
                     "validation artifact")


class PatchDataset(Dataset):
    """(uint8 HxWx3 patch, float label) pairs from an artifact, read lazily per worker."""

    def __init__(self, artifact: Artifact, labels: np.ndarray) -> None:
        self.artifact = artifact
        self.labels = torch.from_numpy(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.artifact.patch(index)), self.labels[index]


def make_loader(dataset: PatchDataset, batch_size: int, *, sampler: DistributedSampler | None,
                workers: int, pin_memory: bool, drop_last: bool) -> DataLoader:
    """A loader that keeps workers alive across epochs and prefetches a few batches; never
    more workers than CPUs this process may use."""
    workers = min(workers, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                  else os.cpu_count() or 1)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False,
                      num_workers=workers, pin_memory=pin_memory, drop_last=drop_last,
                      persistent_workers=workers > 0, prefetch_factor=4 if workers else None)


@dataclass(frozen=True)
class Augment:
    """Batched, per-sample augmentation on the device, on (B, 3, H, W) floats in [0, 255]."""

    flips: bool = True
    color_jitter: float = 0.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        if self.flips:
            for dim in (2, 3):
                flip = torch.rand(b, device=x.device) < 0.5
                x = torch.where(flip.view(b, 1, 1, 1), x.flip(dim), x)
        if self.color_jitter > 0:
            x = self._jitter(x)
        return x

    def _jitter(self, x: torch.Tensor) -> torch.Tensor:
        """Brightness, contrast and saturation factors in 1 +- strength, per sample."""
        b, s = x.shape[0], self.color_jitter

        def factor() -> torch.Tensor:
            return (1 + (torch.rand(b, 1, 1, 1, device=x.device) * 2 - 1) * s).to(x.dtype)

        x = x * factor()
        grey = TF.rgb_to_grayscale(x.clamp(0, 255))
        x = (x - grey.mean(dim=(1, 2, 3), keepdim=True)) * factor() + grey.mean(
            dim=(1, 2, 3), keepdim=True)
        grey = TF.rgb_to_grayscale(x.clamp(0, 255))
        x = (x - grey) * factor() + grey
        return x.clamp(0, 255)
