"""``--device auto|cpu|cuda`` -> a torch device, with a clear error when CUDA is missing."""

from __future__ import annotations

import torch

from histoseg_cli.core.errors import UsageError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without a GPU is a usage error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine; use cpu")
    if name not in DEVICE_CHOICES and not name.startswith("cuda:"):
        raise UsageError(f"--device {name}: expected one of {', '.join(DEVICE_CHOICES)}")
    return torch.device(name)
