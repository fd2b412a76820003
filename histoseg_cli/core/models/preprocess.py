"""Turning uint8 patches into network inputs, the same way in every stage.

The classifier records its normalisation in the checkpoint so that ``cams`` and ``predict`` feed
it exactly what it was trained on. ResNet-38 (the paper) sees inputs scaled to [0, 1] only;
ImageNet encoders see the usual mean/std normalisation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


@dataclass(frozen=True)
class InputNorm:
    """``(x / 255 - mean) / std``; ``mean``/``std`` empty means scaling to [0, 1] only."""

    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    #: mean/std tensors per device, made once: a per-step host-to-device copy would stall
    _tensors: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_spec(cls, spec: str | dict[str, Any]) -> InputNorm:
        """From a checkpoint spec: ``"scale01"``, ``"imagenet"`` or ``{"mean", "std"}``."""
        if spec == "scale01":
            return cls()
        if spec == "imagenet":
            spec = IMAGENET
        if isinstance(spec, dict) and len(spec.get("mean", ())) == 3 and len(spec.get("std", ())) == 3:
            return cls(tuple(float(v) for v in spec["mean"]), tuple(float(v) for v in spec["std"]))
        raise ValueError(f"unknown input normalisation {spec!r}; expected 'scale01', "
                         "'imagenet' or {'mean': [3 values], 'std': [3 values]}")

    def to_spec(self) -> str | dict[str, list[float]]:
        if not self.mean:
            return "scale01"
        return {"mean": list(self.mean), "std": list(self.std)}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Float (B, 3, H, W) inputs from (B, 3, H, W) values in [0, 255] (uint8 or float)."""
        x = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float() / 255.0
        if self.mean:
            if x.device not in self._tensors:
                self._tensors[x.device] = (
                    torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1),
                    torch.tensor(self.std, device=x.device).view(1, 3, 1, 1))
            mean, std = self._tensors[x.device]
            x = (x - mean) / std
        return x


def to_input(patches: torch.Tensor, device: torch.device, norm: InputNorm | None,
             channels_last: bool = False,
             augment: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """uint8 (B, H, W, 3) patches -> normalised float (B, 3, H, W) on ``device``: the uint8
    copy (4x fewer bytes than float) is the only transfer, augmentation runs on the device.
    Training, Grad-CAM and inference all feed the network through here. ``norm`` None keeps
    values in [0, 255] (for modules that normalise inside, e.g. the gated segmenter)."""
    x = patches.to(device, non_blocking=True).permute(0, 3, 1, 2).float()
    if augment is not None:
        x = augment(x)
    memory = torch.channels_last if channels_last else torch.contiguous_format
    x = x if norm is None else norm(x)
    return x.contiguous(memory_format=memory)
