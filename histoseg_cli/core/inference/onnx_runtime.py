"""Running an exported gated segmenter (``histoseg export -o model.onnx``) with ONNX Runtime.

The file carries its own description (a :class:`ModelCard` in its metadata), so ``predict``
treats it like a checkpoint: the same inputs, the same outputs. The execution provider is
chosen from what the installed onnxruntime offers: CUDA when a GPU is asked for and present,
else CPU. Outputs come back as host tensors, so stitching runs on the CPU.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from histoseg_cli.core.errors import HistosegError, InputError
from histoseg_cli.core.inference.card import CARD_KEY, ModelCard
from histoseg_cli.core.inference.engine import BatchedMap

log = logging.getLogger("histoseg")
INPUT = "patches"


def import_onnxruntime() -> Any:
    """onnxruntime, or one clear line saying how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise HistosegError("ONNX Runtime is not installed: pip install 'histoseg-cli[onnx]'"
                            ) from None
    return onnxruntime


def read_card(session: Any, path: Path) -> ModelCard:
    """The model card an exported file carries in its metadata."""
    meta = session.get_modelmeta().custom_metadata_map
    try:
        return ModelCard.from_json(meta[CARD_KEY])
    except (KeyError, ValueError):
        raise InputError(path, "an ONNX file without a histoseg description; expected one "
                         "written by histoseg export") from None


class OnnxEngine(BatchedMap):
    """An ONNX Runtime session of an exported gated segmenter."""

    def __init__(self, session: Any, card: ModelCard, path: Path) -> None:
        self.session = session
        self.card = card
        self.path = path
        self.device = torch.device("cpu")  # where outputs land
        self.outputs = [o.name for o in session.get_outputs()]

    @classmethod
    def open(cls, path: Path, device: torch.device, threads: int | None = None) -> OnnxEngine:
        """Open ``path`` on ``device`` ("cuda" uses the CUDA execution provider if present)."""
        ort = import_onnxruntime()
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, ("CUDAExecutionProvider",
                                     {"device_id": device.index or 0}))
            else:
                log.warning("this onnxruntime has no CUDA provider (pip install "
                            "onnxruntime-gpu); running %s on the CPU", path.name)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own error types
            raise InputError(path, f"not a loadable ONNX model ({type(err).__name__}: "
                             f"{str(err).splitlines()[0][:200]})") from None
        return cls(session, read_card(session, path), path)

    def __call__(self, patches: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"labels", "probs", "gate"}`` for a (B, P, P, 3) uint8 batch."""
        if isinstance(patches, torch.Tensor):
            patches = patches.cpu().numpy()
        values = self.session.run(None, {INPUT: np.ascontiguousarray(patches, dtype=np.uint8)})
        out = {name: torch.from_numpy(v) for name, v in zip(self.outputs, values)}
        out["probs"] = out["probs"].float()
        return out
