"""Training data: artifacts -> batches of uint8 patches and their targets.

Workers read uint8 patches (and per-row targets) from the artifacts (each worker opens its own
HDF5 handles) into pinned memory; augmentation and normalisation run on the training device on
whole batches, so the host does no per-pixel work and transfers a quarter of the bytes of
float inputs. Dataset folders never reach this module: the caller resolves them to artifacts.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from histoseg_cli.core.data.labels import labels_from_masks
from histoseg_cli.core.data.reader import Artifact
from histoseg_cli.core.errors import InputError
from histoseg_cli.core.interrupts import leave_interrupts_to_parent


def train_labels(artifact: Artifact, batch_size: int | None = None) -> np.ndarray:
    """The (N, C) labels of a training artifact, with clear errors for unusable data (with
    ``batch_size``: fewer patches than one batch, which the loop's ``drop_last`` would skip)."""
    if len(artifact) == 0:
        raise InputError(artifact.path, "holds no patches; expected a non-empty training set")
    if batch_size is not None and len(artifact) < batch_size:
        raise InputError(artifact.path, f"holds {len(artifact)} patches, fewer than the batch "
                         f"size {batch_size}; lower {{batch_size}}")
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


class Column:
    """One per-row target: an in-memory array, or a dataset of an artifact read lazily (each
    worker process reopens the file)."""

    def __init__(self, source: np.ndarray | Artifact, dataset: str | None = None,
                 select: Sequence[int] | None = None) -> None:
        self.source = source
        self.dataset = dataset
        self.select = None if select is None else list(select)  # e.g. CAM layers to keep

    def __getitem__(self, index: int) -> torch.Tensor:
        if isinstance(self.source, np.ndarray):
            row = self.source[index]
        else:
            row = self.source.file[self.dataset][index]
            if self.select is not None:
                row = row[self.select]
        return torch.from_numpy(np.ascontiguousarray(row))


class PatchDataset(Dataset):
    """(uint8 HxWx3 patch, *targets) rows of an artifact, read lazily per worker."""

    def __init__(self, artifact: Artifact, *columns: Column | np.ndarray) -> None:
        self.artifact = artifact
        self.columns = [c if isinstance(c, Column) else Column(c) for c in columns]

    def __len__(self) -> int:
        return len(self.artifact)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        return (torch.from_numpy(self.artifact.patch(index)),
                *(column[index] for column in self.columns))


def make_loader(dataset: Dataset, batch_size: int, *, sampler: DistributedSampler | None,
                workers: int, pin_memory: bool, drop_last: bool, seed: int = 0) -> DataLoader:
    """A loader that keeps workers alive across epochs and prefetches a few batches; never
    more workers than CPUs this process may use.

    It draws its workers' seeds from a generator of its own: persistent workers draw once, in
    the first epoch a process runs, so drawing from the global RNG would shift every later
    random number of that epoch and a resumed run would differ from an uninterrupted one.
    Its workers leave Ctrl-C and SIGTERM to the training process, which stops them.
    """
    workers = min(workers, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                  else os.cpu_count() or 1)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False,
                      num_workers=workers, pin_memory=pin_memory, drop_last=drop_last,
                      persistent_workers=workers > 0, prefetch_factor=4 if workers else None,
                      generator=torch.Generator().manual_seed(seed),
                      worker_init_fn=_leave_interrupts_to_parent if workers else None)


def _leave_interrupts_to_parent(worker_id: int) -> None:
    leave_interrupts_to_parent()
