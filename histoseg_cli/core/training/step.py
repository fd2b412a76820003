"""One optimisation step of the fast path, shared by train-cls and benchmarks/bench_train.py."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from histoseg_cli.core.models.preprocess import InputNorm, to_input
from histoseg_cli.core.training.data import Augment


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` ("auto": bf16 on CUDA, none on CPU)."""
    if precision == "auto":
        use = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if use else None
    return torch.bfloat16 if precision == "bf16" else None


@dataclass
class TrainStep:
    """uint8 (B, H, W, 3) batch -> augment + normalise on the device -> forward (autocast) ->
    multi-label soft margin loss -> SGD step -> LR schedule step. Returns the detached loss
    on the device; nothing here waits for the device."""

    net: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    norm: InputNorm
    augment: Augment
    device: torch.device
    dtype: torch.dtype | None = None  # autocast dtype, None = fp32
    channels_last: bool = True

    def __call__(self, patches: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = to_input(patches, self.device, self.norm, self.channels_last, self.augment)
        y = targets.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32,
                            enabled=self.dtype is not None):
            logits = self.net(x)
        loss = F.multilabel_soft_margin_loss(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return loss.detach()
