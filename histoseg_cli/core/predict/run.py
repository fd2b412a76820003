"""``histoseg predict`` as one request: what the input is, where outputs go, the folder loop.

Folders of images, slides or patches artifacts are resumable (inputs whose outputs are
complete are skipped, ``overwrite`` redoes them), one failing input is reported while the
others go on, and a manifest CSV lists every input. Under torchrun the inputs are split across
ranks: each rank writes its own inputs' outputs, rank 0 gathers the outcomes and writes the
manifest.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from rich.table import Table

from histoseg_cli.core.atomic import check_writable
from histoseg_cli.core.distributed import DistContext
from histoseg_cli.core.errors import InputError, UsageError
from histoseg_cli.core.folder_run import (MANIFEST, FailureLog, FolderRun, RunOutcome,
                                          rank_share)
from histoseg_cli.core.imageio import list_images
from histoseg_cli.core.predict.cohort import read_areas, summary_row, write_summary
from histoseg_cli.core.predict.images import ImageTargets, predict_image_file
from histoseg_cli.core.predict.inputs import (ARTIFACT_SUFFIXES, artifacts_in, input_mode,
                                              slides_in)
from histoseg_cli.core.predict.patches import ArtifactTargets, predict_artifact
from histoseg_cli.core.predict.predictor import PredictConfig, Predictor
from histoseg_cli.core.predict.shards import Shard, read_shard_rows
from histoseg_cli.core.predict.slides import SlideTargets, predict_slide
from histoseg_cli.core.progress import SILENT, Reporter
from histoseg_cli.core.provenance import check_kept
from histoseg_cli.core.data.reader import recorded_provenance
from histoseg_cli.core.slides.batch import output_paths
from histoseg_cli.core.slides.extract import PreparedSlide, SlideConfig, prepare_slide
from histoseg_cli.core.slides.resolution import Target
from histoseg_cli.core.slides.tiler import StripReader

log = logging.getLogger("histoseg")

#: Seconds between mid-run rewrites of a slide folder's cohort summary (the end always writes).
SUMMARY_EVERY = 30.0
MANIFEST_FIELDS = ("input", "status", "output", "tiles", "seconds", "tiles_per_s", "made_by",
                   "error")


@dataclass(frozen=True)
class PredictRequest:
    """Everything ``predict`` was asked."""

    segmenter: Path
    input: Path
    output: Path
    classifier: Path | None = None
    config: PredictConfig = field(default_factory=PredictConfig)
    target: Target | None = None  # slide resolution; None: the segmenter's (else 10x)
    slides: SlideConfig = field(default_factory=SlideConfig)  # tissue and thumbnail options
    stride: int | None = None  # None: half a window for images, a window for slides
    workers: int = 1
    geojson: bool = False
    labels_tiff: bool = False  # slides: the label map as a pyramidal TIFF for slide viewers
    heatmaps: bool = False  # slides: each class's probability as a pyramidal TIFF and a PNG
    overwrite: bool = False
    shard: Shard | None = None  # one of N array jobs over the same folder
    device: str = "auto"


@dataclass
class Job:
    """One input of a run and where its outputs go."""

    input: Path
    targets: ImageTargets | SlideTargets | ArtifactTargets
    status: str = "pending"
    result: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    def row(self, made_by: str = "") -> dict[str, object]:
        r = self.result
        return {"input": self.input, "status": self.status,
                "output": r.get("output", "") if self.status != "failed" else "",
                "tiles": r.get("tiles", ""), "seconds": r.get("seconds", ""),
                "tiles_per_s": self.speed,
                "made_by": made_by if self.status in ("done", "skipped") else "",
                "error": self.error}

    @property
    def speed(self) -> object:
        """Tiles (slides, images) or patches (artifacts) per second, when done."""
        return self.result.get("tiles_per_s", self.result.get("patches_per_s", ""))

    def from_row(self, row: dict[str, str]) -> Job:
        """This job as a manifest row (another shard's) reports it."""
        result = {k: row[k] for k in ("output", "tiles", "seconds", "tiles_per_s") if row.get(k)}
        return replace(self, status=row.get("status") or "pending", result=result,
                       error=row.get("error", ""))


def _folder_output(req: PredictRequest) -> Path:
    if req.output.suffix.lower() in ARTIFACT_SUFFIXES + (".png",):
        raise UsageError(f"{req.output}: {req.input} is a folder, so {{output}} must be a folder",
                         setting="output")
    if req.output.resolve() == req.input.resolve():
        raise UsageError(f"{req.output} is the input folder; label PNGs named like the "
                         "images would replace them: write them elsewhere", setting="output")
    return req.output


def plan_jobs(req: PredictRequest, mode: str, classes: tuple[str, ...] = ()) -> list[Job]:
    """The inputs of an image/slide request and their targets (sub-folders mirrored);
    ``classes`` name the heatmaps when they are asked for."""
    heatmaps = tuple(classes) if req.heatmaps else ()
    if mode == "image":
        out = req.output
        if out.suffix.lower() == ".png":
            return [Job(req.input, ImageTargets.in_folder(req.input, out.parent, out.name))]
        return [Job(req.input, ImageTargets.in_folder(req.input, out))]
    if mode == "images":
        out = _folder_output(req)
        return [Job(p, ImageTargets.in_folder(p, out)) for p in list_images(req.input)]
    if mode == "artifacts":  # sub-folders mirrored, as tile writes them for slides
        out = _folder_output(req)
        found = artifacts_in(req.input, exclude=out)
        return [Job(a, ArtifactTargets(target))
                for a, (target, _) in zip(found, output_paths(found, req.input, out))]
    if mode == "slide" and req.output.suffix.lower() in ARTIFACT_SUFFIXES:
        return [Job(req.input, SlideTargets(req.output, req.geojson, req.labels_tiff, heatmaps))]
    out = req.output if mode == "slide" else _folder_output(req)
    slides = [req.input] if mode == "slide" else slides_in(req.input, exclude=out)
    return [Job(s, SlideTargets(a, req.geojson, req.labels_tiff, heatmaps))
            for s, (a, _) in zip(slides, output_paths(slides, req.input, out))]


def result_settings(req: PredictRequest, mode: str, predictor: Predictor,
                    slides: SlideConfig | None) -> dict[str, Any]:
    """The request's settings that change what ``mode`` writes (outputs record them): for
    slides those of their tiling, as ``tile`` records them."""
    if slides is not None:
        return slides.settings()
    if mode in ("image", "images"):
        return {"stride": req.stride or max(1, predictor.patch_size // 2)}
    return {}


def slide_config(req: PredictRequest, predictor: Predictor) -> SlideConfig:
    """The request's slide options at the segmenter's patch size; the resolution defaults to
    the one the segmenter was trained at."""
    target = req.target
    if target is None:
        target = Target(mpp=predictor.mpp) if predictor.mpp else req.slides.target
        if not predictor.mpp:
            log.warning("the segmenter records no resolution; predicting slides at %s "
                        "(set {mpp} or {magnification})", target.describe())
    return replace(req.slides, target=target, patch_size=predictor.patch_size,
                   stride=req.stride or req.slides.stride)


#: What each input kind is called in messages.
INPUT_KINDS = {"artifact": "a patches artifact", "artifacts": "a folder of patches artifacts",
               "image": "an image", "images": "a folder of images", "slide": "a slide",
               "slides": "a folder of slides"}
#: What -o may name for each input kind: file suffixes, or a folder (no known suffix).
OUTPUT_SUFFIXES = {"artifact": ARTIFACT_SUFFIXES, "artifacts": (), "image": (".png",),
                   "images": (), "slide": ARTIFACT_SUFFIXES, "slides": ()}
#: Suffixes that name files, never folders.
FILE_SUFFIXES = (*ARTIFACT_SUFFIXES, ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".csv",
                 ".json", ".onnx", ".engine", ".pt", ".geojson")


def check_output(req: PredictRequest, mode: str) -> None:
    """-o fits the input: a file of the input kind's suffix, or a folder."""
    suffix = req.output.suffix.lower()
    allowed = OUTPUT_SUFFIXES[mode]
    if suffix in FILE_SUFFIXES and suffix not in allowed:
        fits = " or ".join([*allowed, "a folder"])
        raise UsageError(f"{req.output}: {req.input} is {INPUT_KINDS[mode]}, so {{output}} is "
                         f"{fits}, not a {suffix} file", setting="output")
    check_writable(req.output, folder=suffix not in allowed)


def run_predict(req: PredictRequest, reporter: Reporter = SILENT) -> RunOutcome:
    """Check the input, load the networks, predict, and say what was written."""
    mode = input_mode(req.input)
    check_output(req, mode)
    for asked, setting in ((req.labels_tiff, "labels_tiff"), (req.heatmaps, "heatmaps")):
        if asked and mode not in ("slide", "slides"):
            raise UsageError(f"applies to whole slides; {req.input} is {INPUT_KINDS[mode]}",
                             setting)
    for path, what in ((req.segmenter, "a train-seg run directory or checkpoint"),
                       (req.classifier, "a train-cls run directory or checkpoint")):
        if path is not None and not path.exists():
            raise InputError(path, f"no such file or folder (expected {what})")
    ctx = DistContext.from_env(req.device)
    try:
        predictor = Predictor.load(req.segmenter, req.classifier, ctx.device, req.config)
        if req.stride is not None and req.stride > predictor.patch_size:
            raise UsageError(f"{req.stride} is larger than the segmenter's {predictor.patch_size}"
                             " px window and would leave unpredicted gaps; use at most "
                             f"{predictor.patch_size}", setting="stride")
        slides = slide_config(req, predictor) if mode in ("slide", "slides") else None
        predictor.provenance = predictor.provenance_for(
            req.segmenter, req.classifier, result_settings(req, mode, predictor, slides))
        if mode == "artifact":  # one file: rank 0 writes it, other ranks have nothing to do
            out = req.output
            if out.suffix.lower() not in ARTIFACT_SUFFIXES:
                out = out / f"{req.input.stem}.h5"
            kept = out.is_file() and not req.overwrite
            if kept:  # made the same way: kept as it is; otherwise refused
                check_kept([(out, recorded_provenance(out))], predictor.provenance)
                log.info("%s: complete, made by the same model and settings; kept "
                         "({overwrite} redoes it)", out)
            result: dict[str, Any] = {}
            if ctx.is_main and kept:
                result = {"input": str(req.input), "output": str(out), "status": "skipped"}
            elif ctx.is_main:
                with reporter.bar("predict", unit="patches") as bar:
                    task = bar.add_task(req.input.name, total=None)
                    result = predict_artifact(req.input, out, predictor, _progress(bar, task))
            ctx.barrier()
            return RunOutcome({"inputs": [result]}, [str(out)], main=ctx.is_main)
        return _run_jobs(req, mode, predictor, slides, ctx, reporter)
    finally:
        ctx.close()


def _run_jobs(req: PredictRequest, mode: str, predictor: Predictor,
              config: SlideConfig | None, ctx: DistContext, reporter: Reporter) -> RunOutcome:
    planned = plan_jobs(req, mode, tuple(predictor.class_names))
    if not planned:
        raise InputError(req.input, "holds no images, slides or artifacts to predict")
    jobs = req.shard.take(planned) if req.shard else planned
    started = time.perf_counter()
    mine = rank_share(jobs, ctx.rank, ctx.world_size)
    if not ctx.is_main:
        reporter = SILENT  # one set of progress bars: rank 0's
    folder = mode in ("images", "slides", "artifacts")
    made_by = predictor.provenance.key() if predictor.provenance else ""
    manifest = (req.output / (req.shard.manifest_name if req.shard else MANIFEST)
                if folder else None)
    if req.shard is not None and manifest is not None:  # other shards made the same way?
        read_shard_rows([p for p in req.shard.manifests(req.output) if p != manifest],
                        made_by, manifest)
    slides = config is not None
    stride = req.stride or max(1, predictor.patch_size // 2)
    run = FolderRun(mine, manifest, MANIFEST_FIELDS, lambda job: job.row(made_by))
    complete = [] if req.overwrite else [
        (job, job.targets.output, job.targets.recorded()) for job in mine
        if job.targets.complete()]
    made = predictor.provenance
    todo = run.skip_complete(complete, config.wanted(made) if config and made else made)
    for job, _, _ in complete:
        job.result = {"output": str(job.targets.output)}
    summarised = 0.0  # when the cohort summary was last rewritten mid-run

    def prepare(job: Job) -> PreparedSlide | None:
        return prepare_slide(job.input, config, preview=False) if config else None

    with StripReader(req.workers if slides else 1) as strips, \
            reporter.bar("predict", unit="tiles") as bar:
        strips.start()
        # the next slide is opened and planned while this one is predicted
        for job, prepared in run.ahead(todo, prepare):
            task = bar.add_task(job.input.name, total=None)
            _run_one(job, prepared, predictor, strips, stride, _progress(bar, task), run)
            bar.remove_task(task)
            if manifest is not None and not ctx.distributed:
                run.write_manifest(jobs)
                # mid-run summaries at most every SUMMARY_EVERY s: a large cohort would spend
                # longer rereading area tables and drawing than predicting
                if (mode == "slides" and req.shard is None
                        and time.perf_counter() - summarised >= SUMMARY_EVERY):
                    _summarise(jobs, req.output, predictor)
                    summarised = time.perf_counter()
    all_jobs = _gather(mine, jobs, ctx)
    seconds = time.perf_counter() - started
    summary: list[Path] = []
    failures = run.failures
    if manifest is not None and ctx.is_main:
        run.write_manifest(all_jobs)
        cohort = all_jobs
        if req.shard is not None:  # merge every shard's manifest found so far
            reported = read_shard_rows(req.shard.manifests(req.output), made_by, manifest)
            cohort = [job.from_row(reported[str(job.input)]) if str(job.input) in reported
                      else job for job in planned]
            run.write_manifest(cohort, req.output / MANIFEST)
        if mode == "slides":
            summary = _summarise(cohort, req.output, predictor)
    if ctx.distributed:  # each rank logs its own failures; the closing line counts all
        failures.release()
        failures = FailureLog.counted(len(all_jobs), [(j.input, j.error) for j in all_jobs
                                                      if j.status == "failed"])
    if reporter.enabled and ctx.is_main and not failures.all_one_reason:
        reporter.console.print(summary_table(all_jobs, seconds))
    payload: dict[str, Any] = {"inputs": [{"input": str(j.input), "status": j.status,
                                           "error": j.error or None, **j.result}
                                          for j in all_jobs],
                               "seconds": round(seconds, 3)}
    if manifest is not None:
        payload["manifest"] = str(manifest)
    if summary:
        payload["summary"] = [str(p) for p in summary]
    paths = [str(j.result["output"]) for j in all_jobs if j.status != "failed"]
    return RunOutcome(payload, paths, failures.closing_message(manifest) or "", ctx.is_main)


def _progress(bar: Any, task: Any) -> Callable[..., None]:
    """What inputs report progress through: ``(done, total)`` sets it, ``(n)`` advances."""
    def progress(done: int, total: int | None = None) -> None:
        if total is None:
            bar.advance(task, done)
        else:
            bar.update(task, completed=done, total=total)

    return progress


def _run_one(job: Job, prepared: Future[PreparedSlide | None], predictor: Predictor,
             strips: StripReader, stride: int, progress: Callable[..., None],
             run: FolderRun[Job]) -> None:
    try:
        if isinstance(job.targets, SlideTargets):
            job.result = predict_slide(prepared.result(), job.targets, predictor, strips,
                                       progress)
        elif isinstance(job.targets, ArtifactTargets):
            job.result = predict_artifact(job.input, job.targets.output, predictor, progress)
        else:
            job.result = predict_image_file(job.input, job.targets, predictor, stride,
                                            progress)
        run.succeeded(job)
        log.info("%s: %d tiles in %.1f s", job.input.name, job.result["tiles"],
                 job.result.get("seconds", 0.0) or 0.0)
    except KeyboardInterrupt:
        raise
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - one bad input must not stop the others
        if isinstance(err, BrokenProcessPool):  # a reading worker died (corrupt file?)
            strips.reset()
        run.failed(job, err)


def _summarise(jobs: list[Job], folder: Path, predictor: Predictor) -> list[Path]:
    """The cohort summary of a folder of slides, from each finished slide's area table."""
    rows = []
    for job in jobs:
        areas_csv = getattr(job.targets, "areas", None)
        done = job.status in ("done", "skipped") and areas_csv is not None and areas_csv.is_file()
        rows.append(summary_row(job.input, job.status, read_areas(areas_csv) if done else None,
                                predictor.class_names, job.error))
    return write_summary(folder, rows, predictor.class_names, predictor.palette)


def _gather(mine: list[Job], jobs: list[Job], ctx: DistContext) -> list[Job]:
    """Every rank's jobs on every rank, in input order (alone: ``jobs``)."""
    if not ctx.distributed:
        return jobs
    parts = ctx.gather(mine)
    merged = {str(j.input): j for part in parts for j in part}
    return [merged.get(str(j.input), j) for j in jobs]


def summary_table(jobs: list[Job], seconds: float) -> Table:
    """One row per input: status, tiles, time, speed, error."""
    tiles = sum(int(j.result.get("tiles", 0) or 0) for j in jobs if j.status == "done")
    counts = ", ".join(f"{n} {s}" for s in ("done", "skipped", "failed", "pending")
                       if (n := sum(j.status == s for j in jobs)))
    table = Table(title=f"predict: {len(jobs)} inputs ({counts}); {tiles} tiles in "
                  f"{seconds:.1f} s", title_justify="left")
    for name in ("input", "status", "tiles", "s", "tiles/s", "note"):
        table.add_column(name, justify="left" if name in ("input", "status", "note")
                         else "right", overflow="fold" if name == "input" else "ellipsis")
    style = {"done": "green", "skipped": "dim", "failed": "bold red", "pending": "dim"}
    for job in jobs:
        r = job.result
        table.add_row(job.input.name, f"[{style[job.status]}]{job.status}[/]",
                      str(r.get("tiles", "")), str(r.get("seconds", "")),
                      str(job.speed),
                      job.error.removeprefix(f"{job.input}: ").split(";")[0])
    return table
