"""``--device auto|cpu|cuda[:N]`` -> a torch device, with a clear error when CUDA is missing."""

from __future__ import annotations

from typing import TYPE_CHECKING

from histoseg_cli.core.errors import UsageError

if TYPE_CHECKING:
    import torch



def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA when present; plain ``cuda`` means this process's GPU
    (``local_rank`` under torchrun); ``cuda`` without a GPU is a usage error."""
    import torch  # here, not at import time: the CLI lists choices without loading torch

    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UsageError(f"{{device}} {spec}: CUDA is not available on this machine; use cpu")
        return torch.device(spec if ":" in spec else f"cuda:{local_rank}")
    if spec != "cpu":
        raise UsageError(f"{{device}} {spec}: expected auto, cpu, cuda or cuda:N")
    return torch.device("cpu")
