"""``histoseg cams``: a trained classifier + a patches artifact -> multi-layer pseudo masks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from histoseg_cli.app import app
from histoseg_cli.commands.runner import Output, command
from histoseg_cli.commands.options import Device, Overwrite, Precision
from histoseg_cli.core.defaults import WHITE_THRESHOLD

MASKS = "Pseudo masks"
OUTPUTS = "Extra outputs"


@command(app, "cams", panel="Pipeline")
def cams(
    classifier: Annotated[Path, typer.Argument(help="train-cls run directory or checkpoint.",
                                               show_default=False)],
    data: Annotated[Path, typer.Argument(help="Patches artifact (.h5 from histoseg tile) with "
                                         "patch-level labels, or the dataset folder the "
                                         "classifier was trained on (imported beside -o).",
                                         show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Pseudo-masks artifact (.h5) "
                                         "to write; it links to DATA.", show_default=False)],
    dataset: Annotated[str | None, typer.Option(
        "--dataset", help="Layout of a dataset folder DATA \\[default: detected].")] = None,
    device: Device = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1,
                                            help="Patches per forward pass.")] = 8,
    background: Annotated[str | None, typer.Option(
        "--background", help="Background rule: white (bright pixels are glass) or none "
        "\\[default: the one DATA or the classifier records, else none].",
        rich_help_panel=MASKS)] = None,
    white_threshold: Annotated[float, typer.Option(
        "--white-threshold", min=0, max=255, help="Grey value above which a pixel is white "
        "(--background white).", rich_help_panel=MASKS)] = WHITE_THRESHOLD,
    min_size: Annotated[int, typer.Option(
        "--min-size", min=0, help="White 4-connected areas smaller than this many pixels stay "
        "tissue.", rich_help_panel=MASKS)] = 50,
    precision: Precision = "auto",
    tta: Annotated[str, typer.Option(
        "--tta", help="Views whose maps are averaged: flips (the patch and its "
        "three mirror images), d4 (also transposed: 8 views), hflip, or none (one pass, as "
        "the reference).", rich_help_panel=MASKS)] = "flips",
    cam: Annotated[str, typer.Option(
        "--cam", help="layercam (each position weighted by its own positive gradient: "
        "much better shallow-layer masks from scratch) or gradcam (channels weighted by "
        "the mean gradient, as the reference).", rich_help_panel=MASKS)] = "layercam",
    vmap_classes: Annotated[bool, typer.Option(
        "--vmap-classes", help="One vmapped backward pass for all classes instead of one per "
        "class (same maps, more memory; can be faster on GPU).")] = False,
    overwrite: Overwrite = False,
    save_cams: Annotated[bool, typer.Option(
        "--save-cams", help="Also store the normalised CAMs (float16, 3 x C maps per patch).",
        rich_help_panel=OUTPUTS)] = False,
    png_dir: Annotated[Path | None, typer.Option(
        "--png-dir", help="Write palette PNGs per layer into DIR/LAYER/NAME.png.",
        rich_help_panel=OUTPUTS)] = None,
    gallery: Annotated[int, typer.Option(
        "--gallery", min=0, help="Random patches in the gallery PNG written beside the output "
        "(0: none).", rich_help_panel=OUTPUTS)] = 8,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the gallery's patch choice.",
                                      rich_help_panel=OUTPUTS)] = 0,
    *,
    out: Output,
) -> None:
    """Pseudo masks by multi-layer Grad-CAM (three per patch; background = C).

    Rerun the same command to resume an interrupted run after its last finished batch.

    With ground-truth masks in DATA, the pseudo masks' IoU per layer and class is reported.

    [b]Examples[/b]

      histoseg cams runs/cls train.h5 -o pseudo.h5

      histoseg cams runs/cls val.h5 -o val-pseudo.h5 --png-dir val-pngs --json

      histoseg cams runs/cls LUAD-HistoSeg -o pseudo.h5   (the training split, imported)
    """
    from histoseg_cli.core.cams.run import (CamsConfig, CamsRequest,  # torch: now
                                            check_places, run_cams)
    from histoseg_cli.core.ingest.sources import resolve_patch_input

    config = CamsConfig(batch_size=batch_size, background=background,
                        threshold=white_threshold, min_size=min_size, save_cams=save_cams,
                        png_dir=png_dir, gallery=gallery, seed=seed, vectorize=vmap_classes,
                        tta=tta, cam=cam, precision=precision, overwrite=overwrite)
    check_places(classifier, output)  # before a dataset folder is imported
    artifact = resolve_patch_input(data, dataset, output.parent / f"{output.stem}.data",
                                   reporter=out.reporter)
    summary = run_cams(CamsRequest(classifier, artifact, output, config, device), out.reporter)
    paths = [str(summary.output)] + ([str(summary.gallery)] if summary.gallery else [])
    out.result(summary.as_dict(), paths=paths)
