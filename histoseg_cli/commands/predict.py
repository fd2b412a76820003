"""``histoseg predict``: a trained segmenter (+ gate) on patches, images or whole slides."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from histoseg_cli.app import app
from histoseg_cli.cli import Output, command
from histoseg_cli.commands.gate_options import Classifier, GateThreshold, NoGate
from histoseg_cli.core.device import DEVICE_CHOICES
from histoseg_cli.core.errors import HistosegError

SLIDES = "Slides"
RUN = "Run"


@command(app, "predict", panel="Pipeline")
def predict(
    segmenter: Annotated[Path, typer.Argument(help="train-seg run directory or checkpoint.",
                                              show_default=False)],
    input: Annotated[Path, typer.Argument(help="Patches artifact (.h5); an image or folder of "
                                          "images (PNG/JPEG/TIFF, any size); a slide or folder "
                                          "of slides (searched recursively).",
                                          show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder (label PNGs, "
                                         "overlays/, or per-slide outputs and manifest.csv); "
                                         "for one artifact or slide also the .h5 to write, "
                                         "for one image the .png.", show_default=False)],
    classifier: Classifier = None,
    gate_threshold: GateThreshold = 0.1,
    no_gate: NoGate = False,
    stride: Annotated[int | None, typer.Option(
        "--stride", min=1, help="Window step in pixels; overlaps are blended \\[default: half "
        "a window for images, a window for slides].", show_default=False)] = None,
    mpp: Annotated[float | None, typer.Option(
        "--mpp", min=0.01, help="Slide resolution in um/px \\[default: the segmenter's].",
        rich_help_panel=SLIDES, show_default=False)] = None,
    magnification: Annotated[float | None, typer.Option(
        "--magnification", min=0.1, help="Slide magnification (instead of --mpp).",
        rich_help_panel=SLIDES, show_default=False)] = None,
    source_mpp: Annotated[float | None, typer.Option(
        "--source-mpp", min=0.01, help="Level-0 um/px of slides that record none.",
        rich_help_panel=SLIDES, show_default=False)] = None,
    min_tissue: Annotated[float, typer.Option(
        "--min-tissue", min=0.0, max=1.0, help="Predict tiles with at least this tissue "
        "fraction.", rich_help_panel=SLIDES)] = 0.25,
    thumbnail_size: Annotated[int, typer.Option(
        "--thumbnail-size", min=64, help="Longer side of the thumbnail (tissue detection, "
        "overlay).", rich_help_panel=SLIDES)] = 1024,
    geojson: Annotated[bool, typer.Option(
        "--geojson", help="Also write class polygons (GeoJSON for QuPath) per slide.",
        rich_help_panel=SLIDES)] = False,
    workers: Annotated[int, typer.Option(
        "--workers", min=1, help="Slide-reading processes.", rich_help_panel=SLIDES)] = 2,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Redo inputs whose outputs are complete (default: skip them).",
        rich_help_panel=RUN)] = False,
    dataset: Annotated[str | None, typer.Option(
        "--dataset", help="INPUT is a patch-dataset folder of this layout (imported beside "
        "-o first).", rich_help_panel=RUN, show_default=False)] = None,
    device: Annotated[str, typer.Option("--device", help=f"{'|'.join(DEVICE_CHOICES)}.",
                                        rich_help_panel=RUN)] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1,
                                            help="Windows per forward pass.",
                                            rich_help_panel=RUN)] = 16,
    precision: Annotated[str, typer.Option(
        "--precision", help="auto (bf16 autocast on CUDA) | fp32 | bf16.",
        rich_help_panel=RUN)] = "auto",
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the networks.",
                                          rich_help_panel=RUN)] = False,
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
    from histoseg_cli.core.inference.gate import GateConfig
    from histoseg_cli.core.predict.predictor import PredictConfig
    from histoseg_cli.core.predict.run import PredictRequest, run_predict
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
    config = PredictConfig(batch_size=batch_size, precision=precision, compile=compile,
                           gate=GateConfig(gate_threshold, enabled=not no_gate))
    outcome = run_predict(PredictRequest(
        segmenter=segmenter, input=input, output=output, classifier=classifier, config=config,
        target=target, slides=SlideConfig(source_mpp=source_mpp, min_tissue=min_tissue,
                                          thumbnail_size=thumbnail_size),
        stride=stride, workers=workers, geojson=geojson, overwrite=overwrite),
        device=device, reporter=out.reporter)
    if outcome.main:
        out.result(outcome.payload, paths=outcome.paths)
    if outcome.error:
        raise HistosegError(outcome.error)
