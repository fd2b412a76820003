"""How a command stops when asked to: SIGTERM (a batch scheduler pre-empting a job, ``kill``,
``timeout``) stops it the way Ctrl-C does, and worker processes leave both to the command.

A command that dies of SIGTERM's default action gets no chance to clean up: its hidden
temporary files stay, and the user sees no message. Raised as :class:`Terminated`, a
``KeyboardInterrupt``, it goes through the same paths as Ctrl-C: writers abort (keeping what a
rerun resumes from), folder runs stop after recording where they were, and the command says so
in one line.
"""

from __future__ import annotations

import functools
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType, TracebackType


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread (see :func:`sigterm_as_interrupt`)."""

    exit_code = 128 + signal.SIGTERM


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    # Once is enough: a second SIGTERM (some schedulers repeat it) must not break off the
    # clean-up the first one started. SIGKILL still ends the process at once.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated()


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Inside the block, SIGTERM raises :class:`Terminated` in the main thread; the previous
    handler is restored after it. Outside the main thread (where Python cannot set signal
    handlers) the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def leave_interrupts_to_parent() -> None:
    """For worker processes: ignore SIGINT and SIGTERM. Ctrl-C and a scheduler's SIGTERM
    reach every process of the job; the command stops its workers itself, so a worker that
    also reacted would only print its own traceback, or break the pool before the command
    has recorded where it stopped.

    A connection to the command that breaks off in a worker's background thread (the thread
    that hands a batch's shared memory over, when the command stops mid-transfer) is not
    printed either: the command reports why it stopped."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.excepthook = functools.partial(_quiet_lost_connection, sys.excepthook)


def _quiet_lost_connection(report: Callable[..., None], kind: type[BaseException],
                           error: BaseException, trace: TracebackType | None) -> None:
    if not issubclass(kind, (EOFError, ConnectionError)):
        report(kind, error, trace)
