"""One optimisation step of the fast path, for every task (and the training benchmarks)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from histoseg_cli.core.models.preprocess import InputNorm
from histoseg_cli.core.training.augment import PairedAugment

#: ``loss(output, targets)``: the network's output and the batch's targets on the device.
LossFn = Callable[[Any, Sequence[torch.Tensor]], torch.Tensor]


@dataclass
class TrainStep:
    """uint8 (B, H, W, 3) batch + targets -> paired augmentation and normalisation on the
    device -> forward (autocast) -> the task's loss -> SGD step -> LR schedule step. Returns
    the detached loss on the device; nothing here waits for the device."""

    net: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    norm: InputNorm
    augment: PairedAugment
    loss: LossFn
    device: torch.device
    dtype: torch.dtype | None = None  # autocast dtype, None = fp32
    channels_last: bool = True

    def __call__(self, patches: torch.Tensor, *targets: torch.Tensor) -> torch.Tensor:
        x = patches.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        ys = [t.to(self.device, non_blocking=True) for t in targets]
        x, ys = self.augment(x, ys)
        memory = torch.channels_last if self.channels_last else torch.contiguous_format
        x = self.norm(x).contiguous(memory_format=memory)
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32,
                            enabled=self.dtype is not None):
            out = self.net(x)
        loss = self.loss(out, ys)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return loss.detach()
