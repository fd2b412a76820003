"""Progress reporting on stderr.

Core functions take a ``Reporter`` instead of printing, so they stay silent in library use and
tests, and the CLI decides (``--quiet``) whether bars are drawn. stdout is never touched.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.text import Text
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

log = logging.getLogger("histoseg")


class Reporter:
    """Draws rich progress bars on stderr (or nothing when ``enabled`` is false)."""

    def __init__(self, enabled: bool = True, console: Console | None = None) -> None:
        self.enabled = enabled
        self.console = console or Console(stderr=True)

    def track(self, items: Iterable[T], total: int | None = None, description: str = "",
              unit: str = "items") -> Iterator[T]:
        """Iterate ``items`` with a bar showing count, rate in ``unit``/s and time left."""
        if not self.enabled:
            yield from items
            return
        with self.bar(description, unit) as progress:
            task = progress.add_task(description, total=total)
            for item in items:
                yield item
                progress.advance(task)

    def bar(self, description: str = "", unit: str = "items") -> Progress:
        """A rich ``Progress`` for callers that advance by more than one item at a time."""
        return Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            _RateColumn(unit),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
            disable=not self.enabled,
        )


class _RateColumn(TextColumn):
    """Items per second, shown as e.g. ``412.3 patches/s``."""

    def __init__(self, unit: str) -> None:
        super().__init__("")
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        text = f"{speed:,.1f} {self.unit}/s" if speed else f"- {self.unit}/s"
        return Text(text, style="progress.data.speed")


SILENT = Reporter(enabled=False)
