"""A slide or a folder of slides -> one artifact + preview per slide, a manifest, a summary.

Folders are searched recursively by extension. A slide whose artifact is already complete is
skipped (``overwrite`` redoes it); a slide that fails is reported and the others go on. The
manifest CSV is rewritten (atomically) after every slide, so it is current even if the run is
interrupted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.progress import Progress
from rich.table import Table

from histoseg_cli.core.data.reader import Artifact
from histoseg_cli.core.errors import HistosegError, InputError
from histoseg_cli.core.folder_run import MANIFEST, FolderRun, files_under
from histoseg_cli.core.progress import SILENT, Reporter
from histoseg_cli.core.slides.extract import (SlideConfig, SlideResult, SlideTiling,
                                               prepare_slide, slide_encoder)
from histoseg_cli.core.slides.reader import SLIDE_SUFFIXES, SlideReader
from histoseg_cli.core.slides.tiler import StripReader, load_strip

log = logging.getLogger("histoseg")

PREVIEW_SUFFIX = ".thumbnail.png"
MANIFEST_FIELDS = ("slide", "status", "output", "thumbnail", "patches", "grid_tiles", "mpp",
                   "magnification", "level", "level_downsample", "source_mpp", "source_mpp_from",
                   "tissue_fraction", "seconds", "tiles_per_s", "error")


@dataclass
class SlideOutcome:
    """What happened to one slide in a run: done, skipped (already complete) or failed."""

    slide: Path
    status: str
    output: Path
    thumbnail: Path
    patches: int | None = None
    error: str = ""
    result: SlideResult | None = None

    @property
    def input(self) -> Path:
        return self.slide

    def row(self) -> dict[str, object]:
        row: dict[str, object] = {"slide": self.slide, "status": self.status,
                                  "output": self.output if self.status != "failed" else "",
                                  "thumbnail": self.thumbnail if self.thumbnail.exists() else "",
                                  "patches": "" if self.patches is None else self.patches,
                                  "error": self.error}
        r = self.result
        if r is not None:
            res = r.resolution
            row.update(grid_tiles=r.grid_tiles, mpp=f"{res.mpp:.4g}",
                       magnification=f"{res.magnification:.4g}", level=res.level,
                       level_downsample=f"{res.level_downsample:.4g}",
                       source_mpp=f"{res.source_mpp:.4g}", source_mpp_from=res.source_origin,
                       tissue_fraction=f"{r.tissue_fraction:.3f}", seconds=f"{r.seconds:.2f}",
                       tiles_per_s=f"{r.tiles_per_s:.1f}")
        return row


@dataclass
class BatchSummary:
    """The outcome of every slide of a run and where the manifest is."""

    outcomes: list[SlideOutcome]
    manifest: Path
    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    error: str = ""  # the closing line when some slide failed

    @property
    def failed(self) -> list[SlideOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    def as_dict(self) -> dict[str, object]:
        return {"manifest": str(self.manifest),
                "slides": [{k: str(v) if isinstance(v, Path) else v for k, v in o.row().items()}
                           for o in self.outcomes]}


def find_slides(source: Path, exclude: Path | None = None) -> list[Path]:
    """``source`` itself, or the slide files under it (recursive, sorted, hidden skipped).

    A folder of DICOM files is one slide (OpenSlide finds the other levels beside the first).
    """
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise InputError(source, "no such file or folder (expected a slide or a folder of "
                         "slides)")
    found: list[Path] = []
    dicom_dirs: set[Path] = set()
    for path in files_under(source, SLIDE_SUFFIXES, exclude):
        if path.suffix.lower() == ".dcm":
            if path.parent in dicom_dirs:
                continue
            dicom_dirs.add(path.parent)
        found.append(path)
    if not found:
        raise InputError(source, f"no slide files found (expected {', '.join(SLIDE_SUFFIXES)});"
                         " for a patch dataset pass {dataset}, for images with masks {masks}")
    return found


def output_paths(slides: list[Path], source: Path, out_dir: Path) -> list[tuple[Path, Path]]:
    """(artifact, thumbnail) for each slide, mirroring sub-folders of ``source``; slides whose
    names differ only by extension keep it (``a.svs.h5``)."""
    root = source if source.is_dir() else source.parent
    stems = [s.relative_to(root).with_suffix("") for s in slides]
    clash = {s for s in stems if stems.count(s) > 1}
    paths = []
    for slide, stem in zip(slides, stems):
        base = out_dir / (stem.with_name(slide.name) if stem in clash else stem)
        paths.append((base.with_name(base.name + ".h5"), base.with_name(base.name + PREVIEW_SUFFIX)))
    return paths


def completed(artifact: Path) -> tuple[int, dict[str, Any] | None] | None:
    """The patch count and recorded provenance of a complete artifact at ``artifact`` (one
    open), else None."""
    if not artifact.exists():
        return None
    try:
        with Artifact(artifact) as done:
            made = done.meta.extra.get("provenance")
            return len(done), made if isinstance(made, dict) else None
    except (HistosegError, OSError):
        log.info("%s is incomplete or unreadable; redoing it", artifact)
        return None


def tile_slides(source: Path, out_dir: Path, config: SlideConfig, *, workers: int = 1,
                overwrite: bool = False, reporter: Reporter = SILENT,
                artifact: Path | None = None) -> BatchSummary:
    """Tile a slide or every slide under a folder into ``out_dir``; the reporter shows
    per-slide and overall progress and, at the end, a summary table. ``artifact`` names the
    output file of a single slide (its thumbnail goes beside it)."""
    start = time.perf_counter()
    slides = find_slides(source, exclude=out_dir)
    if artifact is not None:
        targets = [(artifact, artifact.with_name(artifact.stem + PREVIEW_SUFFIX))]
    else:
        targets = output_paths(slides, source, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    outcomes = [SlideOutcome(slide, "pending", *paths) for slide, paths in zip(slides, targets)]
    run = FolderRun(outcomes, out_dir / MANIFEST, MANIFEST_FIELDS, SlideOutcome.row)
    complete = []
    for outcome in outcomes if not overwrite else ():
        if (found := completed(outcome.output)) is not None:
            outcome.patches = found[0]
            complete.append((outcome, outcome.output, found[1]))
    todo = run.skip_complete(complete, config.wanted(config.provenance()))
    # closing the stream aborts every slide it opened and did not finish (e.g. on Ctrl-C)
    with StripReader(workers) as strips, reporter.bar("tiling", unit="tiles") as bar, \
            closing(_strips(run, todo, config)) as stream:
        strips.start()
        overall = bar.add_task(f"all slides ({len(complete)}/{len(slides)})", total=None)
        current: _Begin | None = None
        reset = False
        for item, future in strips.stream(stream, slide_encoder(config)):
            if isinstance(item, _Begin):
                if item.tiling is None:
                    run.failed(item.outcome, item.error)
                    continue
                current = item
                current.start(bar, overall)
            elif isinstance(item, _End):
                if current is not None and current.outcome is item.outcome:
                    current.finish(run)
                    current = None
                finished = sum(o.status != "pending" for o in outcomes)
                bar.update(overall, description=f"all slides ({finished}/{len(slides)})")
                run.write_manifest()
            elif current is not None:  # a strip of the current slide (a failed one's: dropped)
                try:
                    try:
                        patches = future.result()
                    except BrokenProcessPool:
                        if not reset:
                            raise
                        # read before an earlier slide broke the pool: read it again here
                        patches = load_strip(current.tiling.reader, item, slide_encoder(config))
                    current.tiling.add(item, patches)
                except Exception as err:  # noqa: BLE001 - one bad slide must not stop others
                    if isinstance(err, BrokenProcessPool):
                        strips.reset()
                        reset = True
                    current.abort()
                    run.failed(current.outcome, err)
                    current = None
                    run.write_manifest()
        tiles = next(t.completed for t in bar.tasks if t.id == overall)
        bar.update(overall, description=f"all slides ({len(slides)}/{len(slides)})",
                   total=tiles)
    run.write_manifest()
    summary = BatchSummary(outcomes, out_dir / MANIFEST, time.perf_counter() - start,
                           run.counts())
    if reporter.enabled and not run.failures.all_one_reason:  # else the closing line says it
        reporter.console.print(summary_table(summary))
    summary.error = run.closing_message()
    return summary


def _strips(run: FolderRun[SlideOutcome], todo: list[SlideOutcome], config: SlideConfig
            ) -> Iterator[object]:
    """Every slide's strips in one stream between begin and end markers: the next slide is
    prepared (thumbnail, tissue) in a thread, and its first strips read, while this one is
    finishing.

    The stream runs ahead of the loop that writes, so it owns the slides it opens: when the
    run stops (Ctrl-C, SIGTERM: raised here, or closing the stream) it aborts every one that
    is not finished, the one being written and any opened ahead."""
    opened: list[SlideTiling] = []
    try:
        for outcome, prepared in run.ahead(todo, lambda o: prepare_slide(o.slide, config)):
            try:
                tiling = SlideTiling(prepared.result(), outcome.output, outcome.thumbnail,
                                     config)
            except Exception as err:  # noqa: BLE001 - reported, the others go on
                yield _Begin(outcome, None, err)
                continue
            opened = [t for t in opened if t.open] + [tiling]
            yield _Begin(outcome, tiling)
            yield from tiling.strips
            yield _End(outcome)
    except BaseException:
        for tiling in opened:
            tiling.abort()
        raise


@dataclass
class _Begin:
    """Stream marker: a slide begins (its strips follow), or failed to prepare."""

    outcome: SlideOutcome
    tiling: SlideTiling | None
    error: BaseException | None = None
    task: int | None = None

    @property
    def reader(self) -> SlideReader | None:
        return None if self.tiling is None else self.tiling.reader

    def start(self, bar: Progress, overall: int) -> None:
        """Show this slide's bar; the overall bar advances with it."""
        self.task = bar.add_task(self.tiling.slide.path.name, total=None)
        seen = [0]

        def advance(n: int, total: int) -> None:
            bar.update(self.task, total=total, completed=n)
            bar.advance(overall, n - seen[0])
            seen[0] = n

        self.tiling.progress = advance
        self._bar = bar

    def finish(self, run: FolderRun[SlideOutcome]) -> None:
        """The slide's artifact is whole: record its result."""
        try:
            result = self.tiling.finish()
        finally:
            self._bar.remove_task(self.task)
        self.outcome.patches, self.outcome.result = result.patches, result
        run.succeeded(self.outcome)
        log.info("%s: %d patches in %.1f s (%.0f tiles/s)", self.outcome.slide.name,
                 result.patches, result.seconds, result.tiles_per_s)

    def abort(self) -> None:
        self.tiling.abort()
        self._bar.remove_task(self.task)


@dataclass
class _End:
    """Stream marker: a slide's strips are all through."""

    outcome: SlideOutcome


def summary_table(summary: BatchSummary) -> Table:
    """One row per slide: status, patches, resolution, speed, error."""
    counts = ", ".join(f"{n} {s}" for s, n in summary.counts.items() if n)
    made = sum(o.patches or 0 for o in summary.outcomes if o.status == "done")
    table = Table(title=f"tile: {len(summary.outcomes)} slides ({counts}); {made} new patches "
                  f"in {summary.seconds:.1f} s ({made / max(summary.seconds, 1e-9):.0f} "
                  "tiles/s)", title_justify="left")
    for name, justify in (("slide", "left"), ("status", "left"), ("patches", "right"),
                          ("mpp", "right"), ("level", "right"), ("s", "right"),
                          ("tiles/s", "right"), ("note", "left")):
        table.add_column(name, justify=justify,  # type: ignore[arg-type]
                         no_wrap=name != "note", overflow="fold" if name == "slide" else "ellipsis",
                         min_width=None if name in ("slide", "note") else len(name))
    style = {"done": "green", "skipped": "dim", "failed": "bold red"}
    for o in summary.outcomes:
        row = o.row()
        note = o.error.removeprefix(f"{o.slide}: ").split(";")[0]  # full text in the log
        table.add_row(o.slide.name, f"[{style[o.status]}]{o.status}[/]", str(row["patches"]),
                      str(row.get("mpp", "")), str(row.get("level", "")),
                      str(row.get("seconds", "")), str(row.get("tiles_per_s", "")), note)
    return table
