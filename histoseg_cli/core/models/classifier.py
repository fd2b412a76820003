"""The stage-1 patch classifier's checkpoint record and how to rebuild it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from histoseg_cli.core.models.base import PatchClassifier, build_backbone
from histoseg_cli.core.models.checkpoint import LoadedModel, ModelInfo, load_model, register_task


@dataclass
class ClassifierInfo(ModelInfo):
    """A trained patch classifier: backbone, Grad-CAM layers, PDA state."""

    task = "classifier"
    backbone: str = "resnet38d"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    cam_layers: list[str] = field(default_factory=list)
    background: str | None = None  # dataset CAM background rule ("white"/"none") if known
    dropout: float = 0.5
    pda: dict[str, Any] = field(default_factory=dict)  # schedule, enabled, mu of the last epoch
    input_scale: float = 1.0  # inputs resized by this factor inside the network


#: Output stride of checkpoints that do not record theirs: every backbone was built at 8 then.
UNRECORDED_STRIDE = 8


def build_classifier(info: ClassifierInfo) -> PatchClassifier:
    """An untrained classifier with the architecture ``info`` describes (no PDA module)."""
    backbone = build_backbone(info.backbone,
                              **{"output_stride": UNRECORDED_STRIDE, **info.backbone_kwargs})
    return PatchClassifier(backbone, info.num_classes, dropout=info.dropout,
                           input_scale=info.input_scale)


register_task("classifier", ClassifierInfo, build_classifier, "train-cls")

#: A loaded classifier (``.model`` is a :class:`PatchClassifier`, ``.info`` a ClassifierInfo).
LoadedClassifier = LoadedModel


def load_classifier(path_or_run_dir: str | Path, device: str | torch.device = "cpu",
                    prefer: str = "best") -> LoadedModel:
    """Load a trained classifier in eval mode (no PDA, no dropout) on ``device``."""
    return load_model(path_or_run_dir, device, prefer, task="classifier")
