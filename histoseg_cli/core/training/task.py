"""What a training stage supplies to the one loop: a task object.

The loop (:mod:`.loop`) owns everything both stages share: devices and torchrun, precision and
channels_last, ``--compile``, SGD with poly decay, exact resume, the run directory, metrics,
curves and best-checkpoint selection. A task owns what differs: the network, its parameter
groups, the data columns, the augmentation, the loss, per-epoch hooks, validation and the
checkpoint record. Tasks register by name so the loop never branches on the stage.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from histoseg_cli.core.data.inputs import DataSources
from histoseg_cli.core.errors import InputError
from histoseg_cli.core.inference.engine import InferenceEngine
from histoseg_cli.core.models.checkpoint import ModelInfo
from histoseg_cli.core.models.preprocess import InputNorm
from histoseg_cli.core.training.augment import PairedAugment
from histoseg_cli.core.training.config import TrainConfig

TRAIN_TASKS: dict[str, type[TrainTask]] = {}


def register_train_task(cls: type[TrainTask]) -> type[TrainTask]:
    """Class decorator: make a task available by its ``name``."""
    TRAIN_TASKS[cls.name] = cls
    return cls


class TrainTask(ABC):
    """One stage's part of a training run. Methods marked rank 0 run on the main process only.
    """

    #: checkpoint task name ("classifier", "segmenter")
    name: ClassVar[str]
    #: the configuration class that asks for this task
    config_type: ClassVar[type[TrainConfig]]
    #: key of the validation dict that selects best.pt (higher is better)
    score_key: ClassVar[str]
    #: validation keys drawn in the curve's middle panel
    curve_keys: ClassVar[tuple[str, ...]] = ()
    #: row key of a per-epoch schedule drawn beside the LR (e.g. PDA's mu), if any
    schedule_key: ClassVar[str | None] = None
    #: title of the loss panel
    loss_name: ClassVar[str] = "loss"

    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    # ---------------------------------------------------------------- set-up
    def preflight(self) -> None:
        """Check the option paths that need no data (rank 0, before any data is imported):
        a ``pretrained`` weights file exists. Tasks add their own."""
        pretrained = self.config.pretrained
        if pretrained is not None and pretrained != "imagenet" and not Path(pretrained).exists():
            raise InputError(pretrained, "no such file (expected a weights file, a training "
                             "run directory, or 'imagenet')")

    @abstractmethod
    def check_data(self, sources: DataSources) -> DataSources:
        """Validate the inputs (rank 0, before anything is written); the sources with
        ``class_names`` filled in. Raise ``InputError`` naming the file otherwise."""

    @abstractmethod
    def build_model(self, sources: DataSources) -> nn.Module:
        """A fresh network for ``sources`` (seeded by the loop)."""

    def load_pretrained(self, model: nn.Module) -> None:
        """Load ``config.pretrained`` into a fresh network (rank 0, new runs only)."""

    def freeze(self, model: nn.Module) -> None:
        """Freeze what fine-tuning from pretrained weights keeps fixed (every run)."""

    @abstractmethod
    def feature_extractor(self, model: nn.Module) -> nn.Module:
        """The backbone or encoder: what pretrained weights load into, and what decides the
        memory layout on a CPU."""

    @abstractmethod
    def input_norm(self, model: nn.Module) -> InputNorm:
        """How uint8 patches become this network's inputs (recorded in the checkpoint)."""

    @abstractmethod
    def parameter_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """SGD parameter groups with their ``lr`` (and ``name``)."""

    # ---------------------------------------------------------------- data and loss
    @abstractmethod
    def train_dataset(self, sources: DataSources) -> Dataset:
        """Rows of ``(uint8 patch, *targets)``."""

    @abstractmethod
    def augment(self) -> PairedAugment:
        """The training augmentation (masks among the targets follow the image)."""

    @abstractmethod
    def loss(self, output: Any, targets: Sequence[torch.Tensor]) -> torch.Tensor:
        """The training loss of one batch (fp32 scalar)."""

    def start_epoch(self, model: nn.Module, epoch: int) -> dict[str, Any]:
        """Per-epoch hook before training (e.g. PDA's mu); extra fields of the metrics row."""
        return {}

    # ---------------------------------------------------------------- validation, records
    def val_dataset(self, sources: DataSources) -> Dataset | None:
        """Validation rows ``(uint8 patch, *targets)``, or None without a validation set."""
        return None

    def validate(self, engine: InferenceEngine, loader: DataLoader) -> dict[str, Any]:
        """Validation metrics of the network in ``engine`` (rank 0)."""
        return {}

    def epoch_end(self, run_dir: Path, row: dict[str, Any]) -> None:
        """After an epoch's checkpoint is saved (rank 0): extra files, e.g. sample figures."""

    @abstractmethod
    def info(self, model: nn.Module, sources: DataSources, row: dict[str, Any]) -> ModelInfo:
        """The checkpoint record after an epoch (the loop sets epoch and iteration)."""

    def describe(self, row: dict[str, Any]) -> str:
        """Extra text of the per-epoch log line."""
        return ""


def split_decay(params: Sequence[nn.Parameter]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Trainable weights (decayed) and norms/biases (not decayed)."""
    decay, no_decay = [], []
    for param in params:
        if param.requires_grad:
            (decay if param.ndim > 1 else no_decay).append(param)
    return decay, no_decay


def backbone_and_head_groups(backbone: Sequence[nn.Parameter], head: Sequence[nn.Parameter],
                             lr: float, head_mult: float, weight_decay: float
                             ) -> list[dict[str, Any]]:
    """Backbone weights (decayed), backbone norms/biases (not decayed), head at ``head_mult``
    times the LR (its norms/biases undecayed too). Frozen parameters are left out."""
    decay, no_decay = split_decay(backbone)
    head_decay, head_no_decay = split_decay(head)
    groups = [
        {"params": decay, "lr": lr, "weight_decay": weight_decay, "name": "backbone"},
        {"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": "backbone_norm"},
        {"params": head_decay, "lr": lr * head_mult, "weight_decay": weight_decay,
         "name": "head"},
        {"params": head_no_decay, "lr": lr * head_mult, "weight_decay": 0.0,
         "name": "head_norm"},
    ]
    return [g for g in groups if g["params"]]


#: ``prepare(data, val, dataset, cache_dir, workers, reporter) -> DataSources``: how the
#: caller turns the command's inputs into artifacts (training never imports ingestion).
PrepareSources = Callable[..., DataSources]
