"""How a command stops when asked to: SIGTERM (a batch scheduler pre-empting a job, ``kill``,
``timeout``) and SIGHUP (the terminal or SSH session closed) stop it the way Ctrl-C does,
and worker processes leave all three to the command.

A command that dies of these signals' default action gets no chance to clean up: its hidden
temporary files stay, and the user sees no message. Raised as :class:`Terminated`, a
``KeyboardInterrupt``, they go through the same paths as Ctrl-C: writers abort (keeping what
a rerun resumes from), folder runs stop after recording where they were, and the command says
so in one line.
"""

from __future__ import annotations

import functools
import os
import signal
import stat
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from types import FrameType, TracebackType

#: The signals that stop a command like Ctrl-C, with the words its message uses. SIGHUP does
#: not exist on Windows.
STOP_SIGNALS: dict[signal.Signals, str] = {signal.SIGTERM: "terminated"}
if hasattr(signal, "SIGHUP"):
    STOP_SIGNALS[signal.SIGHUP] = "hung up"


class Terminated(KeyboardInterrupt):
    """A stop signal (SIGTERM, SIGHUP), raised in the main thread (see
    :func:`stop_signals_as_interrupt`); the exit code is the shell's 128 + signal number."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(signum)
        self.signum = signal.Signals(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def describe(self) -> str:
        """What stopped the command, e.g. ``terminated (SIGTERM)``."""
        return f"{STOP_SIGNALS.get(self.signum, 'stopped')} ({self.signum.name})"


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    # Once is enough: a second signal (schedulers may repeat SIGTERM; a closing terminal sends
    # SIGHUP, then SIGCONT) must not break off the clean-up the first one started. SIGKILL
    # still ends the process at once.
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    if signum == getattr(signal, "SIGHUP", None):
        _leave_closed_terminal()
    raise Terminated(signum)


def _leave_closed_terminal() -> None:
    """After SIGHUP, send stdout and stderr that went to a terminal to /dev/null, as
    ``nohup`` would have: every write to a hung-up terminal fails (EIO), and the clean-up
    (closing progress bars, the one-line message) must not fail with it. A terminal is told
    by its file type, a character device, because ``isatty`` is already false for one that
    hung up. Output redirected to files or pipes is left alone, so a log still gets the
    message."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in (1, 2):
            try:
                if stat.S_ISCHR(os.fstat(fd).st_mode):
                    os.dup2(devnull, fd)
            except OSError:  # closed
                pass
    finally:
        os.close(devnull)


@contextmanager
def stop_signals_as_interrupt() -> Iterator[None]:
    """Inside the block, SIGTERM and SIGHUP raise :class:`Terminated` in the main thread; the
    previous handlers are restored after it. A signal the parent set to be ignored stays
    ignored (``nohup`` ignores SIGHUP so that a job outlives its terminal). Outside the main
    thread (where Python cannot set signal handlers) the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    with ExitStack() as restore:
        for sig in STOP_SIGNALS:
            previous = signal.getsignal(sig)
            if previous == signal.SIG_IGN:
                continue
            signal.signal(sig, _raise_terminated)
            restore.callback(signal.signal, sig,
                             signal.SIG_DFL if previous is None else previous)
        yield


def leave_interrupts_to_parent() -> None:
    """For worker processes: ignore SIGINT, SIGTERM and SIGHUP. Ctrl-C, a scheduler's
    SIGTERM and a closing terminal's SIGHUP reach every process of the job; the command stops
    its workers itself, so a worker that also reacted would only print its own traceback, or
    break the pool before the command has recorded where it stopped.

    A connection to the command that breaks off in a worker's background thread (the thread
    that hands a batch's shared memory over, when the command stops mid-transfer) is not
    printed either: the command reports why it stopped."""
    for sig in (signal.SIGINT, *STOP_SIGNALS):
        signal.signal(sig, signal.SIG_IGN)
    sys.excepthook = functools.partial(_quiet_lost_connection, sys.excepthook)


def _quiet_lost_connection(report: Callable[..., None], kind: type[BaseException],
                           error: BaseException, trace: TracebackType | None) -> None:
    if not issubclass(kind, (EOFError, ConnectionError)):
        report(kind, error, trace)
