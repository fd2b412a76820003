"""``histoseg tile``: patch datasets and annotated image folders -> artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from histoseg_cli.app import app
from histoseg_cli.cli import Output, command
from histoseg_cli.core.datasets import DATASETS, find_splits, get_dataset
from histoseg_cli.core.errors import UsageError
from histoseg_cli.core.tiling import TileConfig, tile_masked_images, tile_split

PATCH = "Patches"
DATASET = "Patch datasets"


@command(app, "tile", panel="Data")
def tile(
    input: Annotated[Path, typer.Argument(help="Dataset folder (with --dataset) or image folder "
                                          "(with --masks).", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Artifact (.h5) to write; a "
                                         "folder when INPUT holds several splits.",
                                         show_default=False)],
    dataset: Annotated[str | None, typer.Option(
        "--dataset", help=f"Patch-dataset layout: {', '.join(DATASETS)}.",
        rich_help_panel=DATASET)] = None,
    masks: Annotated[Path | None, typer.Option(
        "--masks", help="Folder of masks (same names as the images): cut patches and derive "
        "labels.", rich_help_panel=PATCH)] = None,
    classes: Annotated[str | None, typer.Option(
        "--classes", help="Comma-separated class names in mask-value order (with --masks).",
        rich_help_panel=PATCH)] = None,
    patch_size: Annotated[int | None, typer.Option(
        "--patch-size", min=8, help="Patch side in pixels \\[default: 224; a dataset's own "
        "patch size with --dataset].", rich_help_panel=PATCH)] = None,
    stride: Annotated[int | None, typer.Option("--stride", min=1, help="Grid step in pixels "
                                               "\\[default: half the patch size].",
                                               rich_help_panel=PATCH)] = None,
    min_fraction: Annotated[float, typer.Option(
        "--min-fraction", min=0.0, max=1.0, help="A class is in a patch's label if it covers "
        "more than this fraction of the patch.", rich_help_panel=PATCH)] = 0.05,
    keep_empty: Annotated[bool, typer.Option(
        "--keep-empty", help="Keep patches in which no class is present.",
        rich_help_panel=PATCH)] = False,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Image-decoding threads.")] = 4,
    *,
    out: Output,
) -> None:
    """Cut a patch dataset or an annotated image folder into an HDF5 artifact.

    [b]Examples[/b]

      histoseg tile LUAD-HistoSeg/train --dataset luad -o train.h5

      histoseg tile LUAD-HistoSeg --dataset luad -o artifacts/   (one file per split)

      histoseg tile glas/images --masks glas/masks --classes non-gland,gland --patch-size 112 --stride 56 -o glas.h5
    """
    config = TileConfig(patch_size=patch_size if patch_size or dataset else 224, stride=stride,
                        min_fraction=min_fraction, keep_empty=keep_empty, workers=workers)
    if masks is not None:
        if not classes:
            raise UsageError("--masks needs --classes (class names in mask-value order)")
        names = [c.strip() for c in classes.split(",") if c.strip()]
        if len(names) < 1 or len(set(names)) != len(names):
            raise UsageError(f"--classes '{classes}': expected distinct comma-separated names")
        palette = get_dataset(dataset).palette_array() if dataset else None
        summary = tile_masked_images(input, masks, output, names, config, palette=palette,
                                     reporter=out.reporter)
        out.result(summary.as_dict())
        return
    if dataset is None:
        raise UsageError("say what INPUT is: --dataset luad|bcss for a patch dataset, or "
                         "--masks MASKS --classes a,b,c for an annotated image folder")
    spec = get_dataset(dataset)
    splits = find_splits(input, spec)
    if len(splits) == 1:
        summaries = [tile_split(splits[0], output, spec, config, out.reporter)]
    else:
        if output.suffix in (".h5", ".hdf5"):
            raise UsageError(f"{input} holds {len(splits)} splits; pass a folder as -o")
        summaries = [tile_split(s, output / f"{s.name}.h5", spec, config, out.reporter)
                     for s in splits]
    out.result({"outputs": [s.as_dict() for s in summaries]},
               paths=[str(s.output) for s in summaries])
