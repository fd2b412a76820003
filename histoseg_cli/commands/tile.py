"""``histoseg tile``: whole-slide images, patch datasets and annotated image folders -> artifacts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from histoseg_cli.app import app
from histoseg_cli.cli import Output, command
from histoseg_cli.core.data.datasets import DATASETS, find_splits, get_dataset
from histoseg_cli.core.errors import HistosegError, UsageError
from histoseg_cli.core.slides.batch import tile_slides
from histoseg_cli.core.slides.extract import SlideConfig
from histoseg_cli.core.slides.resolution import Target
from histoseg_cli.core.ingest.patches import TileConfig, tile_masked_images, tile_split

PATCH = "Patches"
DATASET = "Patch datasets"
SLIDES = "Slides"


@command(app, "tile", panel="Data")
def tile(
    input: Annotated[Path, typer.Argument(help="Slide or folder of slides (searched "
                                          "recursively); dataset folder (with --dataset); "
                                          "image folder (with --masks).", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder for slides "
                                         "(one .h5 + thumbnail per slide, manifest.csv); "
                                         "otherwise the artifact (.h5) to write, a folder when "
                                         "INPUT holds several splits.", show_default=False)],
    mpp: Annotated[float | None, typer.Option(
        "--mpp", min=0.01, help="Target resolution in um/px (instead of --magnification).",
        rich_help_panel=SLIDES, show_default=False)] = None,
    magnification: Annotated[float | None, typer.Option(
        "--magnification", min=0.1, help="Target magnification, 10x = 1.0 um/px "
        "\\[default: 10].", rich_help_panel=SLIDES, show_default=False)] = None,
    source_mpp: Annotated[float | None, typer.Option(
        "--source-mpp", min=0.01, help="Level-0 um/px of slides that record none (overrides "
        "the recorded value).", rich_help_panel=SLIDES, show_default=False)] = None,
    min_tissue: Annotated[float | None, typer.Option(
        "--min-tissue", min=0.0, max=1.0, help="Keep tiles with at least this tissue fraction "
        "\\[default: 0.25].", rich_help_panel=SLIDES, show_default=False)] = None,
    thumbnail_size: Annotated[int | None, typer.Option(
        "--thumbnail-size", min=64, help="Longer side of the thumbnail used for tissue "
        "detection \\[default: 1024].", rich_help_panel=SLIDES, show_default=False)] = None,
    compression: Annotated[str | None, typer.Option(
        "--compression", help="HDF5 filter for slide patches: gzip (the artifact format's; "
        "encoded in the reading workers), none or lzf \\[default: gzip].",
        rich_help_panel=SLIDES, show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Redo slides whose output is complete (default: skip them).",
        rich_help_panel=SLIDES)] = False,
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
        "--workers", min=1, help="Slides: reading processes, one slide handle each "
        "\\[default: CPU count, at most 4]. Otherwise image-decoding threads \\[default: 4].",
        show_default=False)] = None,
    *,
    out: Output,
) -> None:
    """Cut whole-slide images, a patch dataset or an annotated image folder into HDF5 artifacts.

    [b]Examples[/b]

      histoseg tile slides/ -o tiles/   (10x, 224 px, tissue only; one .h5 per slide)

      histoseg tile slide.svs -o tiles/ --mpp 0.5 --patch-size 256 --min-tissue 0.5

      histoseg tile tcga/ -o tiles/ --source-mpp 0.25   (slides that record no mpp)

      histoseg tile LUAD-HistoSeg/train --dataset luad -o train.h5

      histoseg tile LUAD-HistoSeg --dataset luad -o artifacts/   (one file per split)

      histoseg tile glas/images --masks glas/masks --classes non-gland,gland --patch-size 112 --stride 56 -o glas.h5
    """
    slide_options = {"--mpp": mpp, "--magnification": magnification, "--source-mpp": source_mpp,
                     "--min-tissue": min_tissue, "--thumbnail-size": thumbnail_size,
                     "--compression": compression, "--overwrite": overwrite or None}
    patch_options = {"--classes": classes, "--min-fraction": min_fraction,
                     "--keep-empty": keep_empty or None}
    if dataset is None and masks is None:
        _reject(patch_options, "to --dataset/--masks, not to slides")
        if output.suffix.lower() in (".h5", ".hdf5"):
            raise UsageError(f"-o {output}: slides need an output folder (one .h5 per slide)")
        config = SlideConfig(
            target=Target(mpp=mpp, magnification=10.0 if mpp is None and magnification is None
                          else magnification),
            source_mpp=source_mpp, patch_size=patch_size or 224, stride=stride,
            min_tissue=0.25 if min_tissue is None else min_tissue,
            thumbnail_size=thumbnail_size or 1024,
            compression={None: "gzip", "none": None}.get(compression, compression))
        summary = tile_slides(input, output, config, reporter=out.reporter, overwrite=overwrite,
                              workers=workers or min(4, os.cpu_count() or 1))
        ok = [o for o in summary.outcomes if o.status != "failed"]
        out.result(summary.as_dict(), paths=[str(o.output) for o in ok])
        if len(summary.outcomes) == 1 and summary.failed:
            raise HistosegError(summary.failed[0].error)
        if summary.failed:
            raise HistosegError(f"{len(summary.failed)} of {len(summary.outcomes)} slides "
                                f"failed; see {summary.manifest}")
        return
    _reject(slide_options, "to slides, not to --dataset/--masks")
    config = TileConfig(patch_size=patch_size if patch_size or dataset else 224, stride=stride,
                        min_fraction=0.05 if min_fraction is None else min_fraction,
                        keep_empty=keep_empty, workers=workers or 4)
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
    assert dataset is not None
    spec = get_dataset(dataset)
    splits = find_splits(input, spec)
    if any(split.is_labelled for split in splits):
        _reject({"--patch-size": patch_size, "--stride": stride,
                 "--min-fraction": min_fraction, "--keep-empty": keep_empty or None},
                f"to images with masks, not to {spec.name} training patches (stored "
                "as they are); tile the val/test folders on their own to cut them")
    if len(splits) == 1:
        target = output / f"{splits[0].name}.h5" if output.is_dir() else output
        summaries = [tile_split(splits[0], target, spec, config, out.reporter)]
    else:
        if output.suffix in (".h5", ".hdf5"):
            raise UsageError(f"{input} holds {len(splits)} splits; pass a folder as -o")
        summaries = [tile_split(s, output / f"{s.name}.h5", spec, config, out.reporter)
                     for s in splits]
    out.result({"outputs": [s.as_dict() for s in summaries]},
               paths=[str(s.output) for s in summaries])


def _reject(options: dict[str, object], why: str) -> None:
    given = [name for name, value in options.items() if value is not None]
    if given:
        raise UsageError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} {why}")
