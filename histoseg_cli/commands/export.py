"""``histoseg export``: the gated segmenter as an ONNX file or a TensorRT engine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from histoseg_cli.app import app
from histoseg_cli.commands.runner import Output, command
from histoseg_cli.commands.options import (DEFAULT_GATE_THRESHOLD, Classifier, GateThreshold,
                                          NoGate)

ENGINE = "TensorRT engines"


@command(app, "export", panel="Deploy")
def export(
    segmenter: Annotated[Path, typer.Argument(help="train-seg run directory or checkpoint.",
                                              show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="model.onnx or model.engine "
                                         "(the ONNX file is kept beside an engine).",
                                         show_default=False)],
    classifier: Classifier = None,
    gate_threshold: GateThreshold = DEFAULT_GATE_THRESHOLD,
    no_gate: NoGate = False,
    format: Annotated[str | None, typer.Option(
        "--format", help="onnx | engine \\[default: from the -o suffix].",
        show_default=False)] = None,
    precision: Annotated[str | None, typer.Option(
        "--precision", help="fp32 | fp16 | int8 (ONNX for CPUs, calibrated on --calib "
        "patches) \\[default: fp32 for ONNX, fp16 for engines].",
        show_default=False)] = None,
    calib: Annotated[Path | None, typer.Option(
        "--calib", help="Patches artifact to verify (and calibrate int8) the export on "
        "\\[default: the segmenter's training artifact].", show_default=False)] = None,
    samples: Annotated[int, typer.Option("--samples", min=1,
                                         help="Patches the export is verified on.")] = 32,
    min_batch: Annotated[int, typer.Option("--min-batch", min=1, help="Smallest batch.",
                                           rich_help_panel=ENGINE)] = 1,
    opt_batch: Annotated[int, typer.Option("--opt-batch", min=1, help="Batch tuned for.",
                                           rich_help_panel=ENGINE)] = 16,
    max_batch: Annotated[int, typer.Option("--max-batch", min=1, help="Largest batch.",
                                           rich_help_panel=ENGINE)] = 64,
    workspace: Annotated[float, typer.Option("--workspace", help="Builder workspace, GiB.",
                                             rich_help_panel=ENGINE)] = 4.0,
    timing_cache: Annotated[Path | None, typer.Option(
        "--timing-cache", help="Timing cache file, read before and written after the build.",
        rich_help_panel=ENGINE, show_default=False)] = None,
    *,
    out: Output,
) -> None:
    """Export the gated segmenter: uint8 NHWC patches in, per-pixel labels out.

    One graph holds the input normalisation, the gate (classifier or gate head), the masked
    softmax with its ungated fallback and the argmax; outputs labels (uint8), probs and gate;
    dynamic batch, fixed patch size. The export is verified against PyTorch on real patches
    (label agreement and max probability difference are printed) and refused below 99.9%
    agreement in fp32 (99% in fp16, which can overflow; 97% in int8, whose convolutions are
    quantized after calibration on real patches). The gate threshold is fixed in the export.
    histoseg predict runs the result like a checkpoint.

    [b]Examples[/b]

      histoseg export runs/seg --classifier runs/cls -o model.onnx

      histoseg export runs/seg --classifier runs/cls -o model-int8.onnx --precision int8

      histoseg export runs/seg --classifier runs/cls -o model.engine --max-batch 128 --timing-cache trt.cache
    """
    from histoseg_cli.core.export.run import ExportRequest, run_export
    from histoseg_cli.core.export.tensorrt_build import EngineConfig
    from histoseg_cli.core.inference.gate import GateConfig

    outcome = run_export(ExportRequest(
        segmenter=segmenter, output=output, classifier=classifier, format=format,
        precision=precision, gate=GateConfig(gate_threshold, enabled=not no_gate),
        calib=calib, samples=samples,
        engine=EngineConfig(min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
                            workspace_gib=workspace, timing_cache=timing_cache)), out.reporter)
    out.result(outcome.payload, paths=outcome.paths)
