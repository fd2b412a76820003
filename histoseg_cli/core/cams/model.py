"""The classifier as stage 2 needs it: network, class names, and its input normalisation."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from histoseg_cli.core.models.base import PatchClassifier


@dataclass(frozen=True)
class Normalisation:
    """uint8 pixels -> network input: scaled to [0, 1], then (x - mean) / std if given."""

    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    @classmethod
    def from_spec(cls, spec: Any) -> Normalisation:
        """From a checkpoint's record: ``"scale01"``, or a mean/std mapping or object."""
        if spec is None or spec == "scale01":
            return cls()
        get = spec.get if isinstance(spec, Mapping) else lambda k: getattr(spec, k, None)
        mean, std = get("mean"), get("std")
        if mean is None or std is None:
            raise ValueError(f"unknown input normalisation {spec!r}; expected 'scale01' or "
                             "mean and std")
        return cls(tuple(float(v) for v in mean), tuple(float(v) for v in std))  # type: ignore[arg-type]

    def __call__(self, patches: np.ndarray, device: torch.device) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 on ``device``."""
        x = torch.from_numpy(np.ascontiguousarray(patches)).to(device)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        if self.mean is not None and self.std is not None:
            mean = torch.tensor(self.mean, device=device)[None, :, None, None]
            std = torch.tensor(self.std, device=device)[None, :, None, None]
            x = (x - mean) / std
        return x


@dataclass
class CamModel:
    """A trained patch classifier ready for Grad-CAM (eval mode, on its device)."""

    model: PatchClassifier
    class_names: list[str]
    normalisation: Normalisation
    source: str = ""  # checkpoint or run directory it came from
    background: str | None = None  # the background rule recorded at training, if any

    def __post_init__(self) -> None:
        self.model.eval()

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(self.model.backbone.cam_layers)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def fingerprint(self) -> str:
        """SHA-256 of every parameter and buffer: identifies the weights for resuming."""
        h = hashlib.sha256()
        for name, tensor in self.model.state_dict().items():
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()


def load_cam_model(path: str | Path, device: torch.device) -> CamModel:
    """Load a train-cls checkpoint (file or run directory) for Grad-CAM on ``device``."""
    from histoseg_cli.core.models.checkpoint import load_classifier  # train-cls owns the format

    loaded = load_classifier(path, device=device)
    info = loaded.info
    return CamModel(
        model=loaded.model.to(device),
        class_names=list(info.class_names),
        normalisation=Normalisation.from_spec(info.normalisation),
        source=str(Path(path).resolve()),
        background=getattr(info, "background", None),
    )
