"""Every folder run (tile, predict, any later folder command), one way: :class:`FolderRun`
keeps the inputs' states, skips inputs whose outputs are complete (kept only if made the same
way), prepares the next inputs while one runs, records each success and failure, rewrites the
manifest (one CSV row per input, atomically) and words the closing line; the command gets a
:class:`RunOutcome` (payload, output paths, the closing error line).

Each failure is logged as it happens, except while every input so far has failed for one and
the same reason: those are held back, because a folder in which everything fails for one
reason (slides that record no resolution, a wrong flag) should say so once, with the count,
instead of once per input. The first success or a second reason releases them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from histoseg_cli.core.atomic import write_csv_atomic
from histoseg_cli.core.errors import HistosegError, InputError, describe_os_error, render_settings
from histoseg_cli.core.parallel import ordered_futures
from histoseg_cli.core.provenance import Wanted, check_kept

log = logging.getLogger("histoseg")

#: The manifest's file name inside a folder run's output folder.
MANIFEST = "manifest.csv"


def write_manifest(path: Path, fields: Sequence[str], rows: Iterable[Mapping[str, object]]
                   ) -> Path:
    """The manifest at ``path``: one row per input (status, output, figures, error),
    replaced atomically so it is current and whole even if the run is killed. Settings in
    error messages appear by name (the table is not for one front end)."""
    return write_csv_atomic(path, fields, (
        {**row, "error": render_settings(str(row["error"]))} if row.get("error") else row
        for row in rows))


def describe_failure(input: Path, err: BaseException) -> str:
    """One line for an input that failed, naming it; settings stay ``{field}`` for the front
    end to name."""
    if isinstance(err, HistosegError):
        return err.where + err.template
    if isinstance(err, BrokenProcessPool):
        return f"{input}: a worker process died while reading it (corrupt file?)"
    if isinstance(err, OSError):  # an output that could not be written (a full disk)
        return f"{input}: {describe_os_error(err)}"
    return f"{input}: {type(err).__name__}: {err}"


@dataclass
class RunOutcome:
    """What a run hands its command: the JSON payload, the output paths for stdout, the
    closing error line when some input failed (the command exits 1 after printing the rest),
    and whether this process speaks for the run (false on torchrun ranks > 0)."""

    payload: dict[str, Any]
    paths: list[str]
    error: str = ""
    main: bool = True


def failure_reason(input: Path, message: str, err: BaseException | None = None) -> str:
    """``message`` without the input's own path, so failures of different inputs compare."""
    if isinstance(err, InputError) and err.path is not None and Path(err.path) == Path(input):
        return err.expected
    return message.removeprefix(f"{input}: ")


class FailureLog:
    """The failures of one folder run of ``total`` inputs, and its closing line."""

    def __init__(self, total: int, noun: str = "inputs", echo: bool = True) -> None:
        self.total = total
        self.noun = noun
        self.echo = echo  # False: only count (the failures were logged elsewhere)
        self.failures: list[tuple[Path, str, str]] = []  # (input, message, reason)
        self._held: list[str] = []
        self._holding = True

    def success(self) -> None:
        """An input went through: failures are no longer all of one kind."""
        self.release()

    def failure(self, input: Path, message: str, err: BaseException | None = None) -> None:
        """``input`` failed with ``message`` (which names it)."""
        reason = failure_reason(input, message, err)
        if self.failures and reason != self.failures[0][2]:
            self.release()
        self.failures.append((input, message, reason))
        if self._holding:
            self._held.append(message)
        elif self.echo:
            log.error("%s", message)

    def release(self) -> None:
        """Log the failures held back so far (a success or a second reason came, or the
        run's tables are about to be merged)."""
        if self._holding:
            self._holding = False
            for message in self._held if self.echo else ():
                log.error("%s", message)
            self._held.clear()

    @classmethod
    def counted(cls, total: int, failed: list[tuple[Path, str]]) -> FailureLog:
        """A log of failures already reported elsewhere (other ranks), for its closing line."""
        merged = cls(total, echo=False)
        for input, message in failed:
            merged.failure(input, message)
        return merged

    @property
    def all_one_reason(self) -> bool:
        """Every input of the run failed, all for the same reason (nothing logged yet)."""
        return self._holding and bool(self.failures) and len(self.failures) == self.total

    def closing_message(self, manifest: Path | None = None) -> str | None:
        """One line for the end of the run: ``None`` when nothing failed; the shared reason
        once with the count when everything failed for it; else the count and the first."""
        if not self.failures:
            return None
        see = f"; see {manifest}" if manifest is not None else ""
        if self.total == 1:
            return self.failures[0][1]
        if self.all_one_reason:
            return f"{self.total} of {self.total} {self.noun}: {self.failures[0][2]}{see}"
        self.release()
        return (f"{len(self.failures)} of {self.total} {self.noun} failed (first: "
                f"{self.failures[0][1]}){see}")


class FolderItem(Protocol):
    """One input of a folder run: what it is, what became of it ("pending", "done",
    "skipped", "failed") and why it failed."""

    input: Path
    status: str
    error: str


Item = TypeVar("Item", bound=FolderItem)
R = TypeVar("R")


def rank_share(items: Sequence[Item], rank: int, world_size: int) -> list[Item]:
    """The inputs one torchrun rank runs: every ``world_size``-th from ``rank``, so the
    ranks' shares interleave (neighbouring inputs, often alike in size, go to different
    ranks) and every input goes to exactly one."""
    return list(items[rank::world_size])


class FolderRun(Generic[Item]):
    """The run of one folder command over ``items``: states, skip rule, read-ahead, failures,
    manifest (``row`` gives an item's CSV row; no manifest for a single input) and the counts
    and closing line of the end."""

    def __init__(self, items: list[Item], manifest: Path | None, fields: Sequence[str],
                 row: Callable[[Item], Mapping[str, object]], noun: str = "inputs") -> None:
        self.items = items
        self.manifest = manifest
        self.fields = fields
        self.row = row
        self.failures = FailureLog(len(items), noun)

    def skip_complete(self, complete: Iterable[tuple[Item, Path, dict[str, Any] | None]],
                      provenance: Wanted | None) -> list[Item]:
        """Mark the items whose output (path, recorded provenance) is complete as skipped,
        after refusing, before any work, outputs that another model or other settings made;
        the items left to run."""
        complete = list(complete)
        if provenance is not None:
            check_kept([(path, recorded) for _, path, recorded in complete], provenance)
        for item, path, _ in complete:
            item.status = "skipped"
            self.failures.success()
            log.info("%s: complete output %s, skipped ({overwrite} redoes it)", item.input.name,
                     path)
        return [item for item in self.items if item.status == "pending"]

    def ahead(self, todo: list[Item], prepare: Callable[[Item], R]
              ) -> Iterator[tuple[Item, Future[R]]]:
        """``todo`` with ``prepare(item)`` running in a thread for the next two (a slide is
        opened and planned while the one before it runs); ``.result()`` raises its error."""
        with ThreadPoolExecutor(1) as pool:
            yield from zip(todo, ordered_futures(pool, prepare, todo, ahead=2))

    def succeeded(self, item: Item) -> None:
        item.status = "done"
        self.failures.success()

    def failed(self, item: Item, err: BaseException) -> None:
        """``item`` failed: its one-line reason is recorded and logged (or held back while
        everything fails for one reason); the others go on."""
        item.status = "failed"
        item.error = describe_failure(item.input, err)
        self.failures.failure(item.input, item.error, err)
        log.debug("details", exc_info=err)

    def write_manifest(self, items: Iterable[Item] | None = None,
                       path: Path | None = None) -> Path | None:
        """Rewrite the manifest (by default this run's, with every item) atomically."""
        path = path or self.manifest
        if path is None:
            return None
        return write_manifest(path, self.fields,
                              (self.row(i) for i in (self.items if items is None else items)))

    def counts(self) -> dict[str, int]:
        return {s: sum(i.status == s for i in self.items) for s in ("done", "skipped", "failed")}

    def closing_message(self) -> str:
        """The command's closing error line ("" when nothing failed)."""
        return self.failures.closing_message(self.manifest) or ""


def files_under(folder: Path, suffixes: Sequence[str], exclude: Path | None = None
                ) -> list[Path]:
    """The files under ``folder`` (recursive, sorted) whose suffix is one of ``suffixes``
    (lower case), leaving out hidden files and folders (a partial output, say) and anything
    under ``exclude`` (the run's own output folder): a folder run's inputs."""
    found = []
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in suffixes or not path.is_file():
            continue
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        if exclude is not None and path.resolve().is_relative_to(exclude.resolve()):
            continue
        found.append(path)
    return found
