"""``histoseg export`` as one request: load, fuse, export, verify, (build an engine), describe.

The ONNX file is always made first (for ``-o model.engine`` it is kept beside the engine) and
verified in ONNX Runtime against PyTorch on real patches; an engine is verified the same way on
its GPU. Nothing is kept that fails its verification.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from histoseg_cli.core.atomic import check_writable, sweep_killed_writers, temporary_path
from histoseg_cli.core.data.format import names_digest
from histoseg_cli.core.data.reader import Artifact
from histoseg_cli.core.errors import InputError, UsageError
from histoseg_cli.core.folder_run import RunOutcome
from histoseg_cli.core.export.fused import FusedGatedSegmenter
from histoseg_cli.core.export.onnx_export import export_onnx
from histoseg_cli.core.export.quantize import quantize_onnx
from histoseg_cli.core.export.tensorrt_build import EngineConfig, build_engine
from histoseg_cli.core.export.verify import Verification, sample_patches, verify
from histoseg_cli.core.inference.card import ModelCard
from histoseg_cli.core.inference.engine import InferenceEngine
from histoseg_cli.core.inference.gate import GateConfig
from histoseg_cli.core.inference.loading import load_gated
from histoseg_cli.core.inference.onnx_runtime import OnnxEngine
from histoseg_cli.core.progress import SILENT, Reporter
from histoseg_cli.core.inference.tensorrt_runtime import (TensorRTEngine, require_cuda,
                                                          write_sidecar)

log = logging.getLogger("histoseg")
FORMATS = {".onnx": "onnx", ".engine": "engine", ".plan": "engine"}
#: Patches an int8 export is calibrated on (a second random draw, separate from the
#: verification sample; in a small artifact the two can share patches).
CALIBRATION_PATCHES = 64


@dataclass(frozen=True)
class ExportRequest:
    """Everything ``export`` was asked; ``None`` means the format's default."""

    segmenter: Path
    output: Path
    classifier: Path | None = None
    format: str | None = None  # "onnx" | "engine"; default from the suffix of output
    precision: str | None = None  # default fp32 for ONNX, fp16 for engines
    gate: GateConfig = field(default_factory=GateConfig)
    calib: Path | None = None  # patches artifact to verify on
    samples: int = 32
    engine: EngineConfig = field(default_factory=EngineConfig)

    @property
    def resolved_format(self) -> str:
        if self.format is not None:
            if self.format not in ("onnx", "engine"):
                raise UsageError("expected onnx or engine", setting="format")
            return self.format
        try:
            return FORMATS[self.output.suffix.lower()]
        except KeyError:
            raise UsageError(f"{self.output}: name it .onnx or .engine, or pass {{format}}",
                             setting="output") from None

    @property
    def resolved_precision(self) -> str:
        fmt = self.resolved_format
        precision = self.precision or ("fp16" if fmt == "engine" else "fp32")
        if precision not in ("fp32", "fp16", "int8"):
            raise UsageError("expected fp32, fp16 or int8", setting="precision")
        if precision == "int8" and fmt != "onnx":
            raise UsageError("int8 is for ONNX files run on CPUs; engines take fp16 or fp32",
                             setting="precision")
        return precision


def _source(req: ExportRequest, card: ModelCard) -> Path:
    """The patches artifact exports are verified (and int8 calibrated) on: ``--calib``, else
    the artifact the segmenter's run read (absolute, checked by the hash of its patch names),
    else (checkpoints of older versions) the dataset import kept in its run directory."""
    if req.calib is not None:
        if not req.calib.is_file():
            raise InputError(req.calib, "no such file: no patches to verify the export on "
                             "(expected a patches artifact .h5)")
        return req.calib
    recorded = card.sources.get("training_data")
    digest = card.sources.get("training_names_sha256")
    candidates = [Path(recorded)] if recorded else []
    run_dir = req.segmenter if req.segmenter.is_dir() else req.segmenter.parent
    candidates.append(run_dir / "data" / "train.h5")
    for path in candidates:
        if path.is_file():
            if digest:
                with Artifact(path) as art:
                    if names_digest(art.names()) != digest:
                        raise InputError(path, "holds other patches than the segmenter was "
                                         "trained on (changed since); pass {calib} "
                                         "PATCHES.h5")
            return path
    where = f" ({recorded} is gone)" if recorded else ""
    raise InputError(req.segmenter, f"no patches to verify the export on{where}; pass "
                     "{calib} PATCHES.h5")


def _export_onnx(fused: FusedGatedSegmenter, card: ModelCard, path: Path, precision: str,
                 calibration: Callable[[], np.ndarray]) -> None:
    """fp32/fp16 straight from the exporter; int8 quantized from an fp32 export."""
    if precision != "int8":
        export_onnx(fused, card, path, precision=precision)
        return
    sweep_killed_writers(path, "fp32")
    fp32 = temporary_path(path, "fp32")
    try:
        export_onnx(fused, replace(card, precision="fp32"), fp32)
        quantize_onnx(fp32, path, card, calibration())
    finally:
        fp32.unlink(missing_ok=True)


def _verified(path: Path, check: Callable[[], Verification]) -> dict[str, object]:
    """Run ``check``; a file that fails it is removed."""
    try:
        return check().as_dict()
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def run_export(req: ExportRequest, reporter: Reporter = SILENT) -> RunOutcome:
    """Export, verify and describe; the result for stdout. (One step: ``reporter`` is taken
    for the shape every stage has.)"""
    fmt, precision = req.resolved_format, req.resolved_precision
    for path, what in ((req.segmenter, "a train-seg run directory or checkpoint"),
                       (req.classifier, "a train-cls run directory or checkpoint")):
        if path is not None and not path.exists():
            raise InputError(path, f"no such file or folder (expected {what})")
    check_writable(req.output)
    engine_config = replace(req.engine, precision=precision)
    if fmt == "engine":
        require_cuda()
    cpu = torch.device("cpu")
    gated, card = load_gated(req.segmenter, req.classifier, cpu, req.gate)
    source = _source(req, card)
    patches = sample_patches(source, req.samples, card.patch_size)
    reference = InferenceEngine.for_model(gated, None, cpu, "fp32")
    fused = FusedGatedSegmenter(gated)
    onnx_path = req.output if fmt == "onnx" else req.output.with_suffix(".onnx")
    onnx_precision = (precision if fmt == "onnx"
                      else "fp16" if engine_config.strongly_typed else "fp32")
    onnx_card = replace(card, runtime="onnx", precision=onnx_precision)
    _export_onnx(fused, onnx_card, onnx_path, onnx_precision, lambda: sample_patches(
        source, CALIBRATION_PATCHES, card.patch_size, seed=1))
    checks = {"onnx": _verified(onnx_path, lambda: verify(
        reference, OnnxEngine.open(onnx_path, cpu), patches, str(source), onnx_precision))}
    result: dict[str, Any] = {"output": str(req.output), "format": fmt,
                              "precision": precision, "onnx": str(onnx_path),
                              "classes": card.class_names, "patch_size": card.patch_size,
                              "gate": card.gate, "gate_threshold": card.gate_threshold}
    if fmt == "engine":
        built = build_engine(onnx_path, req.output, card.patch_size, engine_config)
        engine_card = replace(card, runtime="tensorrt", precision=precision,
                              extra={"tensorrt": built})
        write_sidecar(req.output, engine_card)
        gpu = torch.device("cuda", torch.cuda.current_device())
        reference = InferenceEngine.for_model(gated.to(gpu), None, gpu, "fp32")
        engine = TensorRTEngine.open(req.output)
        checks["engine"] = _verified(req.output, lambda: verify(
            reference, engine, patches, str(source), precision, min(engine.max_batch, 8)))
        result["tensorrt"] = built
    result["verification"] = checks
    for name, check in checks.items():
        log.info("%s vs PyTorch on %d patches of %s: %.4f%% of pixels labelled alike, max "
                 "probability difference %.2g", name, check["patches"], source,
                 100 * check["label_agreement"], check["max_prob_diff"])
    return RunOutcome(result, [str(req.output)])
