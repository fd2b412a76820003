"""Building a TensorRT engine from the exported ONNX file (TensorRT 10 and 11).

fp16: TensorRT 10 builds the fp32 graph with ``BuilderFlag.FP16``; TensorRT 11, which removed
the weak-typing flags, builds a strongly typed network from the fp16 graph. One optimisation
profile covers ``min_batch..max_batch`` (tuned for ``opt_batch``); the workspace is capped; a
timing cache file, when given, is read before and written after the build so later builds on
the same GPU skip the tactic timing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from histoseg_cli.core.atomic import write_bytes_atomic
from histoseg_cli.core.errors import HistosegError, InputError, UsageError
from histoseg_cli.core.inference.tensorrt_runtime import (INPUT, gpu_name, import_tensorrt,
                                                          require_cuda)

log = logging.getLogger("histoseg")


@dataclass(frozen=True)
class EngineConfig:
    """How an engine is built."""

    precision: str = "fp16"
    min_batch: int = 1
    opt_batch: int = 16
    max_batch: int = 64
    workspace_gib: float = 4.0
    timing_cache: Path | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise UsageError("need 1 <= {min_batch} <= {opt_batch} <= {max_batch}")
        if self.workspace_gib <= 0:
            raise UsageError("must be positive", setting="workspace")

    @property
    def strongly_typed(self) -> bool:
        """Whether the build needs the fp16 ONNX graph (TensorRT 11 and later)."""
        return self.precision == "fp16" and major_version() >= 11


def major_version() -> int:
    return int(import_tensorrt().__version__.split(".")[0])


def build_engine(onnx_path: Path, engine_path: Path, patch_size: int,
                 config: EngineConfig) -> dict[str, object]:
    """Parse ``onnx_path``, build, write ``engine_path``; what it was built for."""
    trt = import_tensorrt()
    device = require_cuda()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if config.strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise InputError(onnx_path, f"TensorRT's ONNX parser refused it: {errors}")
    builder_config = builder.create_builder_config()
    builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE,
                                         int(config.workspace_gib * (1 << 30)))
    if config.precision == "fp16" and not config.strongly_typed:
        builder_config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    shape = (patch_size, patch_size, 3)
    profile.set_shape(INPUT, (config.min_batch, *shape), (config.opt_batch, *shape),
                      (config.max_batch, *shape))
    builder_config.add_optimization_profile(profile)
    cache_bytes = b""
    if config.timing_cache is not None and config.timing_cache.is_file():
        cache_bytes = config.timing_cache.read_bytes()
    cache = builder_config.create_timing_cache(cache_bytes)
    builder_config.set_timing_cache(cache, ignore_mismatch=False)
    log.info("building the TensorRT engine (%s, batch %d..%d) on %s; this takes minutes",
             config.precision, config.min_batch, config.max_batch, gpu_name(device))
    serialized = builder.build_serialized_network(network, builder_config)
    if serialized is None:
        raise HistosegError(f"TensorRT could not build an engine from {onnx_path} (see the "
                            "TensorRT messages above)")
    write_bytes_atomic(engine_path, bytes(serialized), sweep=True)
    if config.timing_cache is not None:
        write_bytes_atomic(config.timing_cache, bytes(cache.serialize()))
    return {"version": trt.__version__, "gpu": gpu_name(device),
            "precision": config.precision, "strongly_typed": config.strongly_typed,
            "min_batch": config.min_batch, "opt_batch": config.opt_batch,
            "max_batch": config.max_batch, "workspace_gib": config.workspace_gib}
