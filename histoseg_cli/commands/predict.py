"""``histoseg predict``: a trained segmenter (+ gate) on patches, images or whole slides."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from histoseg_cli.app import app
from histoseg_cli.commands.runner import Output, command
from histoseg_cli.commands.options import (DEFAULT_GATE_THRESHOLD, RUN, Classifier, Compile,
                                          Device, GateThreshold, Magnification, MinTissue, Mpp,
                                          NoGate, Overwrite, Precision, ReaderWorkers,
                                          ForceSourceMpp, SourceMpp, ThumbnailSize)
from histoseg_cli.core.errors import HistosegError

SLIDES = "Slides"


@command(app, "predict", panel="Pipeline")
def predict(
    segmenter: Annotated[Path, typer.Argument(help="train-seg run directory or checkpoint.",
                                              show_default=False)],
    input: Annotated[Path, typer.Argument(help="Patches artifact (.h5) or folder of them; an "
                                          "image or folder of images (PNG/JPEG/TIFF, any size); "
                                          "a slide or folder of slides (folders searched "
                                          "recursively, except for images).",
                                          show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder (label PNGs, "
                                         "overlays/, or per-slide outputs and manifest.csv); "
                                         "for one artifact or slide also the .h5 to write, "
                                         "for one image the .png.", show_default=False)],
    classifier: Classifier = None,
    gate_threshold: GateThreshold = DEFAULT_GATE_THRESHOLD,
    no_gate: NoGate = False,
    stride: Annotated[int | None, typer.Option(
        "--stride", min=1, help="Window step in pixels; overlaps are blended \\[default: half "
        "a window for images, a window for slides].", show_default=False)] = None,
    mpp: Mpp = None,
    magnification: Magnification = None,
    source_mpp: SourceMpp = None,
    force_source_mpp: ForceSourceMpp = False,
    min_tissue: MinTissue = None,
    thumbnail_size: ThumbnailSize = None,
    geojson: Annotated[bool, typer.Option(
        "--geojson", help="Also write class polygons (GeoJSON for QuPath) per slide.",
        rich_help_panel=SLIDES)] = False,
    labels_tiff: Annotated[bool, typer.Option(
        "--labels-tiff", help="Also write the label map as a tiled pyramidal TIFF with the class "
        "colours and the resolution recorded (NAME.labels.tif; opens in QuPath, ASAP, "
        "OpenSlide) per slide.", rich_help_panel=SLIDES)] = False,
    heatmaps: Annotated[bool, typer.Option(
        "--heatmaps", help="Also write each class's gated probability per slide: a pyramidal "
        "greyscale TIFF (0-255 = 0-1; NAME.heatmap-CLASS.tif) and a tinted thumbnail PNG "
        "beside the overlay (NAME.heatmap-CLASS.png).", rich_help_panel=SLIDES)] = False,
    workers: ReaderWorkers = None,
    overwrite: Overwrite = False,
    shard: Annotated[str | None, typer.Option(
        "--shard", help="K/N: this process is array job K of N over the same folder (K from 0 "
        "to N-1, e.g. $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT); each merges the shards' "
        "manifests into manifest.csv and summary.csv when it ends.", rich_help_panel=RUN,
        show_default=False)] = None,
    dataset: Annotated[str | None, typer.Option(
        "--dataset", help="INPUT is a patch-dataset folder of this layout (imported beside "
        "-o first).", rich_help_panel=RUN, show_default=False)] = None,
    device: Device = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1,
                                            help="Windows per forward pass.",
                                            rich_help_panel=RUN)] = 16,
    precision: Precision = "auto",
    compile_: Compile = False,
    *,
    out: Output,
) -> None:
    """Classification-gated segmentation of patches, images or whole slides.

    Per window, classes the gate rules out are masked from the softmax (all off: the ungated
    prediction). Folders resume: inputs whose outputs are complete are skipped. Under torchrun
    the inputs of a folder are split across ranks.

    [b]Examples[/b]

      histoseg predict runs/seg test.h5 -o pred.h5 --classifier runs/cls

      histoseg predict runs/seg images/ -o labels/   (then: histoseg eval labels/ masks/)

      histoseg predict runs/seg slides/ -o predictions/ --geojson --workers 4

      torchrun --nproc-per-node 4 -m histoseg_cli predict runs/seg slides/ -o predictions/
    """
    from histoseg_cli.core.defaults import default_readers
    from histoseg_cli.core.inference.gate import GateConfig
    from histoseg_cli.core.predict.predictor import PredictConfig
    from histoseg_cli.core.predict.run import PredictRequest, run_predict
    from histoseg_cli.core.predict.shards import Shard
    from histoseg_cli.core.slides.extract import SlideConfig
    from histoseg_cli.core.slides.resolution import Target

    if dataset is not None:
        from histoseg_cli.core.ingest.sources import resolve_patch_input

        cache = (output.parent if output.suffix else output) / f"{input.name}.data"
        input = resolve_patch_input(input, dataset, cache, reporter=out.reporter,
                                    stem=input.name)
    target = None
    if mpp is not None or magnification is not None:
        target = Target(mpp=mpp, magnification=magnification)
    config = PredictConfig(batch_size=batch_size, precision=precision, compile=compile_,
                           gate=GateConfig(gate_threshold, enabled=not no_gate))
    outcome = run_predict(PredictRequest(
        segmenter=segmenter, input=input, output=output, classifier=classifier, config=config,
        target=target, slides=SlideConfig.with_defaults(
            source_mpp=source_mpp, force_source_mpp=force_source_mpp, min_tissue=min_tissue,
            thumbnail_size=thumbnail_size),
        stride=stride, workers=workers or default_readers(), geojson=geojson,
        labels_tiff=labels_tiff, heatmaps=heatmaps, overwrite=overwrite,
        shard=Shard.parse(shard) if shard is not None else None, device=device), out.reporter)
    if outcome.main:
        out.result(outcome.payload, paths=outcome.paths)
    if outcome.error:
        raise HistosegError(outcome.error)
