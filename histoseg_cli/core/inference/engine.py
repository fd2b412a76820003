"""The inference engine: uint8 patches in, network outputs out, the same way everywhere.

It owns what every consumer of a trained network needs and would otherwise copy: the input
normalisation the network was trained with (applied on the device, so only uint8 crosses the
bus), autocast (bf16 on CUDA by default), channels_last, eval mode and batching with pinned-
memory read-ahead. ``cams`` takes its inputs from here, training validates through it, and
``predict`` runs on it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from histoseg_cli.core.defaults import PRECISIONS
from histoseg_cli.core.models.preprocess import InputNorm, to_input
from histoseg_cli.core.parallel import ordered_map

log = logging.getLogger("histoseg")


def cpu_has_bf16_units() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX). Without them oneDNN
    emulates it: on a 2-core AVX2-only EPYC a bf16 forward pass ran at 0.16x fp32."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


@functools.cache
def _warn_emulated_bf16() -> None:
    """Said once per process, however many engines ask for bf16."""
    log.warning("this CPU has no bf16 units (AVX-512 BF16, AMX): {precision} bf16 runs "
                "emulated, several times slower than fp32 here; fp32 (the CPU default) is faster")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` ("auto": bf16 on CUDA, none on CPU)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        use = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if use else None
    if precision == "bf16" and device.type == "cpu" and not cpu_has_bf16_units():
        _warn_emulated_bf16()
    return torch.bfloat16 if precision == "bf16" else None


class BatchedMap:
    """``map`` for any engine whose ``__call__`` takes a uint8 batch (PyTorch, ONNX Runtime,
    TensorRT): batches read ahead in a thread, pinned on CUDA."""

    device: torch.device

    def map(self, read: Callable[[tuple[int, int]], np.ndarray], total: int,
            batch_size: int, ahead: int = 2, start: int = 0
            ) -> Iterator[tuple[int, int, Any]]:
        """``(start, stop, output)`` for rows ``[start, total)`` in batches; ``read(bounds)``
        returns the uint8 batch and runs in a thread ahead of the network (decoding overlaps
        compute). On CUDA each batch is copied through pinned memory."""
        bounds = [(s, min(s + batch_size, total)) for s in range(start, total, batch_size)]
        pin = self.device.type == "cuda"

        def load(b: tuple[int, int]) -> torch.Tensor:
            t = torch.from_numpy(np.ascontiguousarray(read(b)))
            return t.pin_memory() if pin else t

        with ThreadPoolExecutor(1) as pool:
            for (s, e), batch in zip(bounds, ordered_map(pool, load, bounds, ahead=ahead)):
                yield s, e, self(batch)  # type: ignore[operator]


@dataclass
class InferenceEngine(BatchedMap):
    """A network in eval mode with its input normalisation, device and precision."""

    model: nn.Module
    norm: InputNorm | None  # None: the model normalises inside (takes values in [0, 255])
    device: torch.device
    dtype: torch.dtype | None = None  # autocast dtype; None = fp32
    channels_last: bool = False

    @classmethod
    def for_model(cls, model: nn.Module, norm: InputNorm | None, device: torch.device,
                  precision: str = "auto", channels_last: bool | None = None
                  ) -> InferenceEngine:
        """An engine around ``model`` (moved to ``device``); channels_last on CUDA only by
        default (it slows small CPU convolutions)."""
        cl = device.type == "cuda" if channels_last is None else channels_last
        model = model.to(device, memory_format=torch.channels_last if cl
                         else torch.contiguous_format)
        return cls(model, norm, device, autocast_dtype(precision, device), cl)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: torch.device, precision: str = "auto",
                        task: str | None = None) -> tuple[InferenceEngine, Any]:
        """Load any histoseg checkpoint (file or run directory); the engine and its info."""
        from histoseg_cli.core.models.checkpoint import load_model

        loaded = load_model(path, device=device, task=task)
        return cls.for_model(loaded.model, loaded.input_norm, device, precision), loaded

    def inputs(self, patches: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> normalised (B, 3, H, W) float on the device (no grad mode
        change: Grad-CAM needs gradients with respect to these)."""
        if isinstance(patches, np.ndarray):
            patches = torch.from_numpy(np.ascontiguousarray(patches))
        return to_input(patches, self.device, self.norm, self.channels_last)

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.dtype or torch.float32,
                              enabled=self.dtype is not None)

    @torch.inference_mode()
    def __call__(self, patches: np.ndarray | torch.Tensor) -> Any:
        """The network's output for one uint8 batch, in eval mode, floats as fp32."""
        was_training = self.model.training
        self.model.eval()
        try:
            with self.autocast():
                out = self.model(self.inputs(patches))
        finally:
            self.model.train(was_training)
        return _to_float(out)

    def run_loader(self, batches: Iterable[Any]) -> Iterator[Any]:
        """Outputs for each uint8 batch of an iterable (e.g. a DataLoader yielding
        ``(patches, ...)`` tuples: the first element is fed, the rest passed through)."""
        for item in batches:
            if isinstance(item, (tuple, list)):
                yield (self(item[0]), *item[1:])
            else:
                yield self(item)


def _to_float(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.float()
    if isinstance(out, dict):
        return {k: _to_float(v) for k, v in out.items()}
    if isinstance(out, (tuple, list)):
        return type(out)(_to_float(v) for v in out)
    return out
