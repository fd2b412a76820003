"""Running a TensorRT engine built by ``histoseg export -o model.engine`` (TensorRT 10 and 11).

The engine file is TensorRT's own serialisation, untouched (trtexec reads it); its description
lives in a JSON sidecar beside it (``model.engine.json``): the model card plus the TensorRT
version, GPU and batch profile it was built for. An engine only runs on the TensorRT version
and GPU model it was built with, so a mismatch is one clear error saying to rebuild.

Buffers are torch tensors on the engine's GPU; TensorRT reads and writes them in place
(``set_tensor_address``) on torch's current stream (``execute_async_v3``): no pycuda, no
host round trip beyond the uint8 input.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from histoseg_cli.core.atomic import write_text_atomic
from histoseg_cli.core.errors import HistosegError, InputError, UsageError
from histoseg_cli.core.inference.card import ModelCard
from histoseg_cli.core.inference.engine import BatchedMap

INPUT = "patches"


def sidecar_path(engine: Path) -> Path:
    return engine.with_name(engine.name + ".json")


def import_tensorrt() -> Any:
    """tensorrt, or one clear line saying how to get it."""
    try:
        import tensorrt
    except ImportError:
        raise HistosegError(
            "TensorRT is not installed: pip install 'histoseg-cli[trt]' (wheels come from NVIDIA: "
            "pip install --extra-index-url https://pypi.nvidia.com tensorrt), on a machine "
            "with an NVIDIA GPU and driver") from None
    return tensorrt


def require_cuda() -> torch.device:
    if not torch.cuda.is_available():
        raise HistosegError("TensorRT engines need a CUDA GPU, and none is available here; "
                            "use the exported ONNX file on CPU")
    return torch.device("cuda", torch.cuda.current_device())


def gpu_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device)


def _torch_dtype(trt: Any, dtype: Any) -> torch.dtype:
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.uint8: torch.uint8,
             trt.int32: torch.int32, trt.int64: torch.int64, trt.bool: torch.bool}
    return table[dtype]


class TensorRTEngine(BatchedMap):
    """A deserialised engine with one execution context and its optimisation profile."""

    def __init__(self, trt: Any, engine: Any, card: ModelCard, device: torch.device,
                 path: Path) -> None:
        self.trt = trt
        self.engine = engine
        self.context = engine.create_execution_context()
        self.card = card
        self.device = device
        self.path = path
        self.outputs = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)
                        if engine.get_tensor_mode(engine.get_tensor_name(i))
                        == trt.TensorIOMode.OUTPUT]
        self.min_batch, _, self.max_batch = (int(s[0]) for s in
                                             engine.get_tensor_profile_shape(INPUT, 0))

    @classmethod
    def open(cls, path: Path) -> TensorRTEngine:
        """Load ``path`` and its sidecar; refuse an engine built elsewhere."""
        trt = import_tensorrt()
        device = require_cuda()
        side = sidecar_path(path)
        try:
            card = ModelCard.from_json(side.read_text())
        except (OSError, ValueError):
            raise InputError(side, "missing or not a histoseg engine description (expected "
                             "the JSON written beside the engine by histoseg export)") from None
        built = card.extra.get("tensorrt", {})
        here = {"version": trt.__version__, "gpu": gpu_name(device)}
        if built.get("version") != here["version"] or built.get("gpu") != here["gpu"]:
            raise InputError(path, f"built for TensorRT {built.get('version')} on "
                             f"{built.get('gpu')}, this is TensorRT {here['version']} on "
                             f"{here['gpu']}: rebuild it here with histoseg export")
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise InputError(path, "TensorRT could not deserialise this engine; rebuild it "
                             "with histoseg export")
        return cls(trt, engine, card, device, path)

    def __call__(self, patches: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"labels", "probs", "gate"}`` on the GPU for a (B, P, P, 3) uint8 batch."""
        if isinstance(patches, np.ndarray):
            patches = torch.from_numpy(np.ascontiguousarray(patches))
        b = patches.shape[0]
        if not self.min_batch <= b <= self.max_batch:
            raise UsageError(f"a batch of {b} is outside the engine's profile "
                             f"[{self.min_batch}, {self.max_batch}] ({self.path}); pass a "
                             "{batch_size} inside it or rebuild with {min_batch}/{max_batch}",
                             setting="batch_size")
        x = patches.to(self.device, torch.uint8, non_blocking=True).contiguous()
        self.context.set_input_shape(INPUT, tuple(x.shape))
        self.context.set_tensor_address(INPUT, x.data_ptr())
        out = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = _torch_dtype(self.trt, self.engine.get_tensor_dtype(name))
            out[name] = torch.empty(shape, dtype=dtype, device=self.device)
            self.context.set_tensor_address(name, out[name].data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise HistosegError(f"{self.path}: TensorRT failed to run a batch of {b}")
        out["probs"] = out["probs"].float()
        return out


def write_sidecar(engine: Path, card: ModelCard) -> Path:
    """The engine's description beside it (atomic)."""
    return write_text_atomic(sidecar_path(engine), json.dumps(json.loads(card.to_json()),
                                                              indent=2) + "\n")
