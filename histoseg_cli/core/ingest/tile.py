"""``histoseg tile`` as one request: which mode the inputs ask for, the defaults of each mode,
and the run.

Three modes: whole-slide images (a slide or a folder of slides), a registered patch-dataset
layout (``dataset``), and an image folder with masks (``masks``). A folder given without
``dataset`` or ``masks`` is a patch dataset when a registered layout fits its file names (the
detection ``train-cls`` and ``cams`` use), else a folder of slides; plain images alone are
refused, since nothing says what they are. Options that belong to another mode are usage
errors naming the flags. Inputs are checked before outputs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from histoseg_cli.core.atomic import check_writable
from histoseg_cli.core.folder_run import RunOutcome
from histoseg_cli.core.defaults import default_readers
from histoseg_cli.core.data.datasets import find_layout, find_splits, looked_for
from histoseg_cli.core.data.format import ARTIFACT_SUFFIXES
from histoseg_cli.core.data.layouts import get_dataset
from histoseg_cli.core.errors import InputError, UsageError
from histoseg_cli.core.ingest.patches import TileConfig, tile_masked_images, tile_split
from histoseg_cli.core.progress import SILENT, Reporter
from histoseg_cli.core.provenance import Provenance, check_kept
from histoseg_cli.core.data.reader import recorded_provenance

log = logging.getLogger("histoseg")

#: Files that are plain images, not slides, unless a resolution is given for them.
PLAIN_IMAGES = (".png", ".jpg", ".jpeg")

#: ``--compression`` names -> HDF5 filters (None: raw chunks).
COMPRESSIONS = {"gzip": "gzip", "none": None, "lzf": "lzf"}


@dataclass(frozen=True)
class TileRequest:
    """Everything ``tile`` was asked; ``None`` means "the mode's default"."""

    input: Path
    output: Path
    # slides
    mpp: float | None = None
    magnification: float | None = None
    source_mpp: float | None = None
    force_source_mpp: bool = False
    min_tissue: float | None = None
    thumbnail_size: int | None = None
    compression: str | None = None
    overwrite: bool = False
    # patch datasets and annotated images
    dataset: str | None = None
    masks: Path | None = None
    classes: str | None = None
    min_fraction: float | None = None
    keep_empty: bool = False
    # all
    patch_size: int | None = None
    stride: int | None = None
    workers: int | None = None

    @property
    def mode(self) -> str:
        return "slides" if self.dataset is None and self.masks is None else (
            "masks" if self.masks is not None else "dataset")


def _reject(options: dict[str, object], why: str) -> None:
    given = [name for name, value in options.items() if value not in (None, False)]
    if given:
        raise UsageError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} {why}")


def run_tile(req: TileRequest, reporter: Reporter = SILENT) -> RunOutcome:
    """Check the request (inputs first), then run the mode it asks for."""
    if not req.input.exists():
        expected = {"slides": "no such file or folder (expected a slide or a folder of slides)",
                    "dataset": f"no such folder (expected a {req.dataset} dataset folder)",
                    "masks": "no such folder (expected a folder of images)"}
        raise InputError(req.input, expected[req.mode])
    slide_options = {"{mpp}": req.mpp, "{magnification}": req.magnification,
                     "{source_mpp}": req.source_mpp, "{min_tissue}": req.min_tissue,
                     "{thumbnail_size}": req.thumbnail_size, "{compression}": req.compression,
                     "{force_source_mpp}": req.force_source_mpp}
    patch_options = {"{classes}": req.classes, "{min_fraction}": req.min_fraction,
                     "{keep_empty}": req.keep_empty}
    check_writable(req.output, folder=req.output.suffix.lower() not in ARTIFACT_SUFFIXES)
    if req.mode == "slides" and req.input.is_dir():
        req = _folder_mode(req, slide_options)
    if req.mode == "slides":
        _reject(patch_options, "to {dataset}/{masks}, not to slides")
        return _slides(req, reporter)
    _reject(slide_options, "to slides, not to {dataset}/{masks}")
    config = TileConfig(patch_size=req.patch_size if req.patch_size or req.dataset else 224,
                        stride=req.stride,
                        min_fraction=0.05 if req.min_fraction is None else req.min_fraction,
                        keep_empty=req.keep_empty, workers=req.workers or 4)
    return _masks(req, config, reporter) if req.mode == "masks" else _dataset(req, config,
                                                                               reporter)


def _folder_mode(req: TileRequest, slide_options: dict[str, object]) -> TileRequest:
    """A folder without ``--dataset``/``--masks``: the patch dataset whose layout fits its
    names (slide options given for it are a usage error), else slides, but not plain images
    alone without a resolution for them."""
    given = [name for name, value in slide_options.items() if value not in (None, False)]
    spec = find_layout(req.input)
    if spec is not None and given:
        raise UsageError(f"{req.input} holds a {spec.name} patch dataset (labels like "
                         f"{spec.label_example}), and {', '.join(given)} "
                         f"{'applies' if len(given) == 1 else 'apply'} to slides only")
    if spec is not None:
        log.info("%s: detected the %s layout (labels like %s); tiling it as that dataset "
                 "({dataset} %s)", req.input, spec.name, spec.label_example, spec.name)
        return replace(req, dataset=spec.name)
    if req.source_mpp is None:
        from histoseg_cli.core.slides.batch import find_slides  # openslide: only for slides

        try:
            found = find_slides(req.input, exclude=req.output)
        except InputError:  # no slide files at all: said where slides are looked for
            return req
        if all(p.suffix.lower() in PLAIN_IMAGES for p in found):
            raise UsageError(
                f"{req.input}: {len(found)} plain images ({', '.join(PLAIN_IMAGES)}) and no "
                f"slide files, and no patch-dataset layout fits their names (looked for "
                f"{looked_for()}); say what they are: {{dataset}} NAME for a patch dataset, "
                "{masks} FOLDER for images with masks, {source_mpp} UM_PER_PX to tile them "
                "as slides")
    return req


def _slides(req: TileRequest, reporter: Reporter) -> RunOutcome:
    from histoseg_cli.core.slides.batch import tile_slides  # openslide: only for slides
    from histoseg_cli.core.slides.extract import SlideConfig
    from histoseg_cli.core.slides.resolution import Target

    single_file = req.output.suffix.lower() in ARTIFACT_SUFFIXES
    if single_file and req.input.is_dir():
        raise UsageError(f"{req.output}: slides need an output folder (one .h5 per slide) when "
                         "{input} is a folder", "output")
    if req.compression is not None and req.compression not in COMPRESSIONS:
        raise UsageError(f"'{req.compression}': expected {', '.join(COMPRESSIONS)}",
                         "compression")
    config = SlideConfig.with_defaults(
        target=None if req.mpp is None and req.magnification is None
        else Target(mpp=req.mpp, magnification=req.magnification),
        source_mpp=req.source_mpp, force_source_mpp=req.force_source_mpp,
        patch_size=req.patch_size, stride=req.stride,
        min_tissue=req.min_tissue, thumbnail_size=req.thumbnail_size,
        compression=COMPRESSIONS[req.compression or "gzip"])
    summary = tile_slides(req.input, req.output.parent if single_file else req.output, config,
                          reporter=reporter, overwrite=req.overwrite,
                          workers=req.workers or default_readers(),
                          artifact=req.output if single_file else None)
    ok = [o for o in summary.outcomes if o.status != "failed"]
    return RunOutcome(summary.as_dict(), [str(o.output) for o in ok],
                       summary.error)


def _provenance(req: TileRequest, config: TileConfig, images: Path) -> Provenance:
    """What changes the artifact cut from ``images``: the input and the cutting options."""
    return Provenance("tile", {}, {
        "input": str(images.resolve()), "dataset": req.dataset,
        "masks": str(req.masks.resolve()) if req.masks else None, "classes": req.classes,
        "patch_size": config.patch_size, "stride": config.stride,
        "min_fraction": config.min_fraction, "keep_empty": config.keep_empty})


def _keep_only_same(req: TileRequest, target: Path, made: Provenance) -> None:
    """An artifact at ``target`` is replaced only if made the same way, or with --overwrite."""
    if target.is_file() and not req.overwrite:
        check_kept([(target, recorded_provenance(target))], made)


def _masks(req: TileRequest, config: TileConfig, reporter: Reporter) -> RunOutcome:
    assert req.masks is not None
    if not req.classes:
        raise UsageError("{masks} needs {classes} (class names in mask-value order)")
    names = [c.strip() for c in req.classes.split(",") if c.strip()]
    if len(names) < 1 or len(set(names)) != len(names):
        raise UsageError(f"'{req.classes}': expected distinct comma-separated names", "classes")
    palette = get_dataset(req.dataset).palette_array() if req.dataset else None
    made = _provenance(req, config, req.input)
    _keep_only_same(req, req.output, made)
    summary = tile_masked_images(req.input, req.masks, req.output, names, config,
                                 palette=palette, reporter=reporter,
                                 extra={"provenance": made.as_dict()})
    return RunOutcome(summary.as_dict(), [str(summary.output)])


def _dataset(req: TileRequest, config: TileConfig, reporter: Reporter) -> RunOutcome:
    assert req.dataset is not None
    spec = get_dataset(req.dataset)
    splits = find_splits(req.input, spec)
    if any(split.is_labelled for split in splits):
        _reject({"{patch_size}": req.patch_size, "{stride}": req.stride,
                 "{min_fraction}": req.min_fraction, "{keep_empty}": req.keep_empty},
                f"to images with masks, not to {spec.name} training patches (stored "
                "as they are); tile the val/test folders on their own to cut them")
    output = req.output
    if len(splits) == 1:
        targets = [output / f"{splits[0].name}.h5" if output.is_dir() else output]
    else:
        if output.suffix.lower() in ARTIFACT_SUFFIXES:
            raise UsageError(f"{output}: {req.input} holds {len(splits)} splits "
                             f"({', '.join(s.name for s in splits)}); pass a folder as {{output}}")
        targets = [output / f"{s.name}.h5" for s in splits]
    made = [_provenance(req, config, s.images) for s in splits]
    for target, provenance in zip(targets, made):  # all checked before any is written
        _keep_only_same(req, target, provenance)
    summaries = [tile_split(s, target, spec, config, reporter,
                            extra={"provenance": provenance.as_dict()})
                 for s, target, provenance in zip(splits, targets, made)]
    return RunOutcome({"outputs": [s.as_dict() for s in summaries]},
                       [str(s.output) for s in summaries])
