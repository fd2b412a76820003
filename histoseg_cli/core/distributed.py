"""Process-group handling: the same code runs alone or under ``torchrun``.

Under torchrun (``WORLD_SIZE`` > 1) each process joins a group (NCCL on GPUs, gloo on CPU):
training runs a DistributedDataParallel replica per process, prediction splits its inputs
across ranks. Only rank 0 writes shared files and draws progress bars.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from histoseg_cli.core.device import resolve_device


@dataclass
class DistContext:
    """Rank, world size and device of this process."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls, device: str) -> DistContext:
        """Join the torchrun process group if there is one."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        dev = resolve_device(device, local)
        if world > 1 and not dist.is_initialized():
            if dev.type == "cuda":
                torch.cuda.set_device(dev)
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        return cls(rank, world, local, dev)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` averaged over all processes (unchanged when alone)."""
        if self.distributed:
            value = value.clone()
            dist.all_reduce(value)
            value /= self.world_size
        return value

    def share(self, obj: Any) -> Any:
        """Rank 0's ``obj`` (picklable) on every process."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every process's ``obj`` (picklable), in rank order, on every process."""
        if not self.distributed:
            return [obj]
        parts: list[Any] = [None] * self.world_size
        dist.all_gather_object(parts, obj)
        return parts

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()
