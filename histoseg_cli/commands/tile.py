"""``histoseg tile``: whole-slide images, patch datasets and annotated image folders -> artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from histoseg_cli.app import app
from histoseg_cli.commands.runner import Output, command
from histoseg_cli.commands.options import (ForceSourceMpp, Magnification, MinTissue, Mpp,
                                          Overwrite, SourceMpp, ThumbnailSize)
from histoseg_cli.core.defaults import MAX_READERS
from histoseg_cli.core.data.layouts import DATASETS
from histoseg_cli.core.errors import HistosegError

PATCH = "Patches"
DATASET = "Patch datasets"
SLIDES = "Slides"


@command(app, "tile", panel="Data")
def tile(
    input: Annotated[Path, typer.Argument(help="Slide or folder of slides (searched "
                                          "recursively); dataset folder (layout detected, or "
                                          "--dataset); image folder (with --masks).",
                                          show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder for slides "
                                         "(one .h5 + thumbnail per slide, manifest.csv) or, "
                                         "for one slide, the .h5 to write; otherwise the "
                                         "artifact (.h5) to write, a folder when INPUT holds "
                                         "several splits.", show_default=False)],
    mpp: Mpp = None,
    magnification: Magnification = None,
    source_mpp: SourceMpp = None,
    force_source_mpp: ForceSourceMpp = False,
    min_tissue: MinTissue = None,
    thumbnail_size: ThumbnailSize = None,
    compression: Annotated[str | None, typer.Option(
        "--compression", help="HDF5 filter for slide patches: gzip (the artifact format's; "
        "encoded in the reading workers), none or lzf \\[default: gzip].",
        rich_help_panel=SLIDES, show_default=False)] = None,
    overwrite: Overwrite = False,
    dataset: Annotated[str | None, typer.Option(
        "--dataset", help="Patch-dataset layout: "
        + "; ".join(f"{name} ({spec.description})" for name, spec in DATASETS.items()) + ".",
        rich_help_panel=DATASET)] = None,
    masks: Annotated[Path | None, typer.Option(
        "--masks", help="Folder of masks (same names as the images): cut patches and derive "
        "labels.", rich_help_panel=PATCH)] = None,
    classes: Annotated[str | None, typer.Option(
        "--classes", help="Comma-separated class names in mask-value order (with --masks).",
        rich_help_panel=PATCH)] = None,
    patch_size: Annotated[int | None, typer.Option(
        "--patch-size", min=8, help="Patch side in pixels \\[default: 224; a dataset's own "
        "patch size with --dataset].")] = None,
    stride: Annotated[int | None, typer.Option("--stride", min=1, help="Grid step in pixels "
                                               "\\[default: the patch size for slides, half "
                                               "of it otherwise].")] = None,
    min_fraction: Annotated[float | None, typer.Option(
        "--min-fraction", min=0.0, max=1.0, help="A class is in a patch's label if it covers "
        "more than this fraction of the patch \\[default: 0.05].", rich_help_panel=PATCH,
        show_default=False)] = None,
    keep_empty: Annotated[bool, typer.Option(
        "--keep-empty", help="Keep patches in which no class is present.",
        rich_help_panel=PATCH)] = False,
    workers: Annotated[int | None, typer.Option(
        "--workers", "-j", min=1, help="Slides: reading processes, one slide handle each "
        f"\\[default: the CPUs, at most {MAX_READERS}]. Otherwise image-decoding threads "
        "\\[default: 4].", show_default=False)] = None,
    *,
    out: Output,
) -> None:
    """Cut whole-slide images, a patch dataset or an annotated image folder into HDF5 artifacts.

    [b]Examples[/b]

      histoseg tile slides/ -o tiles/   (10x, 224 px, tissue only; one .h5 per slide)

      histoseg tile slide.svs -o slide.h5 --mpp 0.5 --patch-size 256 --min-tissue 0.5

      histoseg tile tcga/ -o tiles/ --source-mpp 0.25   (for the slides that record no mpp)

      histoseg tile LUAD-HistoSeg/train --dataset luad -o train.h5

      histoseg tile LUAD-HistoSeg --dataset luad -o artifacts/   (one file per split)

      histoseg tile glas/images --masks glas/masks --classes non-gland,gland --patch-size 112 --stride 56 -o glas.h5
    """
    from histoseg_cli.core.ingest.tile import TileRequest, run_tile

    outcome = run_tile(TileRequest(
        input=input, output=output, mpp=mpp, magnification=magnification,
        source_mpp=source_mpp, force_source_mpp=force_source_mpp, min_tissue=min_tissue,
        thumbnail_size=thumbnail_size, compression=compression, overwrite=overwrite,
        dataset=dataset, masks=masks, classes=classes, min_fraction=min_fraction,
        keep_empty=keep_empty, patch_size=patch_size, stride=stride, workers=workers),
        out.reporter)
    out.result(outcome.payload, paths=outcome.paths)
    if outcome.error:
        raise HistosegError(outcome.error)
