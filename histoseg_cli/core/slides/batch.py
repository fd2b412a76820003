"""A slide or a folder of slides -> one artifact + preview per slide, a manifest, a summary.

Folders are searched recursively by extension. A slide whose artifact is already complete is
skipped (``overwrite`` redoes it); a slide that fails is reported and the others go on. The
manifest CSV is rewritten (atomically) after every slide, so it is current even if the run is
interrupted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

from rich.progress import Progress
from rich.table import Table

from histoseg_cli.core.data.reader import Artifact, recorded_provenance
from histoseg_cli.core.errors import HistosegError, InputError
from histoseg_cli.core.folder_run import MANIFEST, FailureLog, describe_failure, write_manifest
from histoseg_cli.core.provenance import check_kept
from histoseg_cli.core.progress import SILENT, Reporter
from histoseg_cli.core.parallel import ordered_futures
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
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if exclude is not None and path.resolve().is_relative_to(exclude.resolve()):
            continue
        suffix = path.suffix.lower()
        if suffix not in SLIDE_SUFFIXES:
            continue
        if suffix == ".dcm":
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


def is_complete(artifact: Path) -> int | None:
    """The patch count of a complete artifact at ``artifact``, else None."""
    if not artifact.exists():
        return None
    try:
        with Artifact(artifact) as done:
            return len(done)
    except (HistosegError, OSError):
        log.info("%s is incomplete or unreadable; redoing it", artifact)
        return None


def _write_manifest(path: Path, outcomes: Iterable[SlideOutcome]) -> Path:
    return write_manifest(path, MANIFEST_FIELDS, (o.row() for o in outcomes))


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
    manifest = out_dir / MANIFEST
    out_dir.mkdir(parents=True, exist_ok=True)
    done: dict[int, SlideOutcome] = {}  # by slide index, so the manifest keeps slide order
    failures = FailureLog(len(slides))
    complete = [None if overwrite else is_complete(a) for a, _ in targets]  # patch counts
    # complete artifacts are kept only if tiled the same way
    check_kept([(a, recorded_provenance(a)) for (a, _), n in zip(targets, complete)
                if n is not None], config.provenance())
    todo = []
    for i, (slide, (artifact, preview), existing) in enumerate(zip(slides, targets, complete)):
        if existing is None:
            todo.append(i)
        else:
            done[i] = SlideOutcome(slide, "skipped", artifact, preview, existing)
            failures.success()
            log.info("%s: complete output %s, skipped ({overwrite} redoes it)", slide.name,
                     artifact)
    outcomes = lambda: [done[k] for k in sorted(done)]  # noqa: E731

    def fail(i: int, err: BaseException) -> None:
        message = describe_failure(slides[i], err)
        failures.failure(slides[i], message, err)
        log.debug("details", exc_info=err)
        done[i] = SlideOutcome(slides[i], "failed", *targets[i], error=message)

    with StripReader(workers) as strips, reporter.bar("tiling", unit="tiles") as bar, \
            ThreadPoolExecutor(1) as preparing:
        strips.start()
        overall = bar.add_task(f"all slides ({len(done)}/{len(slides)})", total=None)

        def items() -> Iterator[object]:
            """Every slide's strips in one stream: the next slide is prepared (thumbnail,
            tissue) in a thread, and its first strips read, while this one is finishing."""
            prepared = ordered_futures(preparing, lambda i: prepare_slide(slides[i], config),
                                       todo, ahead=2)
            for i, future in zip(todo, prepared):
                try:
                    tiling = SlideTiling(future.result(), *targets[i], config)
                except Exception as err:  # noqa: BLE001 - reported, the others go on
                    yield _Begin(i, None, err)
                    continue
                yield _Begin(i, tiling)
                yield from tiling.strips
                yield _End(i)

        current: _Begin | None = None
        reset = False
        for item, future in strips.stream(items(), slide_encoder(config)):
            if isinstance(item, _Begin):
                if item.tiling is None:
                    fail(item.index, item.error)
                    continue
                current = item
                current.start(bar, overall)
            elif isinstance(item, _End):
                if current is not None and current.index == item.index:
                    result = current.finish()
                    done[item.index] = SlideOutcome(slides[item.index], "done",
                                                    *targets[item.index], result.patches,
                                                    result=result)
                    failures.success()
                    log.info("%s: %d patches in %.1f s (%.0f tiles/s)",
                             slides[item.index].name, result.patches, result.seconds,
                             result.tiles_per_s)
                    current = None
                bar.update(overall, description=f"all slides ({len(done)}/{len(slides)})")
                _write_manifest(manifest, outcomes())
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
                except KeyboardInterrupt:
                    current.abort()
                    raise
                except Exception as err:  # noqa: BLE001 - one bad slide must not stop others
                    if isinstance(err, BrokenProcessPool):
                        strips.reset()
                        reset = True
                    current.abort()
                    fail(current.index, err)
                    current = None
                    _write_manifest(manifest, outcomes())
        tiles = next(t.completed for t in bar.tasks if t.id == overall)
        bar.update(overall, description=f"all slides ({len(slides)}/{len(slides)})",
                   total=tiles)
    _write_manifest(manifest, outcomes())
    counts = {s: sum(o.status == s for o in done.values()) for s in ("done", "skipped", "failed")}
    summary = BatchSummary(outcomes(), manifest, time.perf_counter() - start, counts)
    if reporter.enabled and not failures.all_one_reason:  # else the closing line says it all
        reporter.console.print(summary_table(summary))
    summary.error = failures.closing_message(manifest) or ""
    return summary


@dataclass
class _Begin:
    """Stream marker: slide ``index`` begins (its strips follow), or failed to prepare."""

    index: int
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

    def finish(self) -> SlideResult:
        try:
            return self.tiling.finish()
        finally:
            self._bar.remove_task(self.task)

    def abort(self) -> None:
        self.tiling.abort()
        self._bar.remove_task(self.task)


@dataclass
class _End:
    """Stream marker: slide ``index``'s strips are all through."""

    index: int


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
