"""What every folder run (tile, predict, any later folder command) reports, one way: the
manifest (one CSV row per input, rewritten atomically as inputs finish), the outcome handed
to the command (payload, output paths, the closing error line), and the failures.

Each failure is logged as it happens, except while every input so far has failed for one and
the same reason: those are held back, because a folder in which everything fails for one
reason (slides that record no resolution, a wrong flag) should say so once, with the count,
instead of once per input. The first success or a second reason releases them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from histoseg_cli.core.atomic import write_csv_atomic

from histoseg_cli.core.errors import HistosegError, InputError, render_settings

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
