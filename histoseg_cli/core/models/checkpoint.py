"""Self-describing classifier checkpoints: what later stages load to rebuild the network.

A checkpoint holds the weights plus a :class:`ClassifierInfo` (architecture, class names, input
normalisation, Grad-CAM layers, PDA state, training config, package version), so ``cams`` and
``predict`` need nothing but the file. Training state (optimizer, LR schedule) rides along for
``--resume`` and is ignored by :func:`load_classifier`. Files are written atomically.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from histoseg_cli import __version__
from histoseg_cli.core.atomic import atomic_path
from histoseg_cli.core.errors import InputError
from histoseg_cli.core.models.base import PatchClassifier, build_backbone
from histoseg_cli.core.models.preprocess import InputNorm

FORMAT = "histoseg.classifier"
FORMAT_VERSION = 1
LAST = "checkpoint.pt"
BEST = "best.pt"


@dataclass
class ClassifierInfo:
    """Everything needed to rebuild and use a trained patch classifier."""

    backbone: str
    class_names: list[str]
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    normalisation: str | dict[str, list[float]] = "scale01"
    cam_layers: list[str] = field(default_factory=list)
    patch_size: int = 224
    background: str | None = None  # dataset CAM background rule ("white"/"none") if known
    dropout: float = 0.5
    config: dict[str, Any] = field(default_factory=dict)
    version: str = __version__
    pda: dict[str, Any] = field(default_factory=dict)  # schedule, enabled, mu of the last epoch
    epoch: int = 0  # epochs completed
    iteration: int = 0  # optimizer steps completed

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_norm(self) -> InputNorm:
        return InputNorm.from_spec(self.normalisation)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassifierInfo:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class LoadedClassifier:
    """A classifier ready for inference (eval mode) and its description."""

    model: PatchClassifier
    info: ClassifierInfo
    path: Path

    @property
    def input_norm(self) -> InputNorm:
        return self.info.input_norm


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP / ``torch.compile`` wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def save_classifier(path: str | Path, model: nn.Module, info: ClassifierInfo,
                    training: dict[str, Any] | None = None) -> Path:
    """Write weights + ``info`` (+ optional training state) to ``path`` atomically."""
    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    payload: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION,
                               "info": asdict(info), "model": state}
    if training is not None:
        payload["training"] = training
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def resolve_checkpoint(path_or_run_dir: str | Path, prefer: str = "best") -> Path:
    """A checkpoint file: the path itself, or in a run dir ``best.pt`` (when ``prefer`` is
    "best" and it exists) else ``checkpoint.pt``."""
    path = Path(path_or_run_dir)
    if path.is_dir():
        order = (BEST, LAST) if prefer == "best" else (LAST,)
        for name in order:
            if (path / name).is_file():
                return path / name
        raise InputError(path, f"no {LAST} in this folder; expected a train-cls run directory")
    if not path.is_file():
        raise InputError(path, "no such file (expected a train-cls checkpoint or run directory)")
    return path


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The raw checkpoint payload, validated."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
        raise InputError(path, f"not a histoseg classifier checkpoint ({type(err).__name__})"
                         ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError(path, "not a histoseg classifier checkpoint (expected train-cls output)")
    if int(payload.get("format_version", 0)) > FORMAT_VERSION:
        raise InputError(path, "written by a newer histoseg; upgrade histoseg to read it")
    return payload


def build_classifier(info: ClassifierInfo) -> PatchClassifier:
    """An untrained classifier with the architecture ``info`` describes (no PDA module)."""
    backbone = build_backbone(info.backbone, **info.backbone_kwargs)
    return PatchClassifier(backbone, info.num_classes, dropout=info.dropout)


def load_classifier(path_or_run_dir: str | Path, device: str | torch.device = "cpu",
                    prefer: str = "best") -> LoadedClassifier:
    """Load a trained classifier in eval mode (no PDA, no dropout) on ``device``."""
    path = resolve_checkpoint(path_or_run_dir, prefer)
    payload = read_checkpoint(path)
    info = ClassifierInfo.from_dict(payload["info"])
    try:
        model = build_classifier(info)
    except (ValueError, TypeError) as err:
        raise InputError(path, f"cannot rebuild the network ({err})") from None
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as err:
        raise InputError(path, f"weights do not fit {info.backbone}: {str(err).splitlines()[0]}"
                         ) from None
    return LoadedClassifier(model.to(device).eval(), info, path)
