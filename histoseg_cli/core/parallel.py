"""Bounded, ordered parallel map: the read-ahead every import, tiling and prediction loop needs."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from typing import TypeVar

from histoseg_cli.core.interrupts import leave_interrupts_to_parent

T = TypeVar("T")
R = TypeVar("R")


def ordered_futures(pool: Executor, fn: Callable[[T], R], items: Iterable[T], ahead: int
                    ) -> Iterator[Future[R]]:
    """Futures of ``fn`` over ``items`` in ``pool``, in input order, each yielded once the next
    ``ahead - 1`` items are submitted too (so they run while the consumer works on it). The
    consumer calls ``.result()``: a failing item raises there, and the others go on."""
    pending: deque[Future[R]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= max(1, ahead):
                yield pending.popleft()
        while pending:
            yield pending.popleft()
    finally:
        for future in pending:
            future.cancel()


def ordered_map(pool: Executor, fn: Callable[[T], R], items: Iterable[T], ahead: int
                ) -> Iterator[R]:
    """``fn`` over ``items`` in ``pool``, results in input order, at most ``ahead`` in flight.

    Unlike ``Executor.map``, which submits everything at once, memory stays bounded when the
    consumer (e.g. a compressing writer) is slower than the workers."""
    for future in ordered_futures(pool, fn, items, ahead):
        yield future.result()


def lagged(items: Iterable[T]) -> Iterator[tuple[T | None, T | None]]:
    """``(current, previous)`` pairs, then ``(None, last)``: lets a loop queue batch k on the
    device before it waits for and writes batch k - 1."""
    previous = None
    for item in items:
        yield item, previous
        previous = item
    if previous is not None:
        yield None, previous


def follow_parent(parent: int) -> None:
    """Initializer of worker processes: leave SIGINT and SIGTERM to ``parent`` (the command,
    which stops its pool itself) and end when it ends, even by ``kill -9``, instead of
    lingering with their pool (and, through them, the multiprocessing resource tracker, which
    ends when its last user does).

    A daemon thread checks every second whether the worker was re-parented. (The kernel's
    ``PR_SET_PDEATHSIG`` is not used: it fires when the *thread* that started the worker
    ends, which in a pool need not be the command's main thread.)
    """
    import os
    import threading
    import time

    leave_interrupts_to_parent()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="follow-parent", daemon=True).start()
