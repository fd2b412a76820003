"""SIGTERM, SIGHUP and Ctrl-C on real processes: the command stops cleanly (one line, exit
143 / 129 / 130, no traceback from it or its workers), its worker processes end, and a rerun
completes.

SIGTERM is what a batch scheduler sends a pre-empted job (to every process of it), what
``kill PID`` and ``timeout`` send (to the command only); Ctrl-C reaches the terminal's whole
process group; SIGHUP comes when the terminal (an SSH session) closes. Each case signals once the command has started writing. That a stopped run
then resumes to the same result as an uninterrupted one is tested in-process (the same
``KeyboardInterrupt`` paths) and, for kill -9, in test_kill.py.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import subprocess
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from harness import ROOT, alive, argv, children, run

pytestmark = pytest.mark.slow

TERMINATED = "terminated (SIGTERM); rerun the command to resume or redo it"
INTERRUPTED = "interrupted; rerun the command to resume or redo it"


def _as_in_a_terminal() -> None:
    """Ctrl-C's default action in the child, as in a terminal: a process inherits an ignored
    SIGINT (pytest-xdist's workers ignore it), and Python then installs no handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _signal_when(ready: Callable[[], bool], sig: signal.Signals, group: bool, args: list[object],
                 cwd: Path, settle: float = 0.0) -> tuple[subprocess.CompletedProcess, list[int]]:
    """Start ``histoseg ARGS`` in a session of its own; ``settle`` seconds after ``ready()``,
    send ``sig`` to it (``group``: to every process of the session, as a scheduler or Ctrl-C
    does). Its result and the child processes it had then."""
    proc = subprocess.Popen(argv(*args), cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)},
                            preexec_fn=_as_in_a_terminal)
    deadline = time.monotonic() + 120
    while not ready():
        assert proc.poll() is None, f"ended before the signal: {proc.communicate()[1]}"
        assert time.monotonic() < deadline, "never got to the moment of the signal"
        time.sleep(0.05)
    time.sleep(settle)
    assert proc.poll() is None, "ended before the signal"
    kids = children(proc.pid)
    if group:
        os.killpg(proc.pid, sig)
    else:
        os.kill(proc.pid, sig)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), kids


def _assert_clean_stop(done: subprocess.CompletedProcess, code: int, line: str,
                       kids: list[int]) -> None:
    assert done.returncode == code, done.stderr
    assert done.stderr.strip().splitlines() == [line], done.stderr  # nothing else, no traceback
    assert done.stdout == ""
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in kids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in kids if alive(pid)]


def test_sigterm_stops_an_artifact_and_keeps_what_resumes(pipeline: dict[str, Path],
                                                          tmp_path: Path):
    """``kill PID`` on cams: the partial artifact stays for the rerun, which completes."""
    out = tmp_path / "pm.h5"
    partial = tmp_path / ".pm.h5.partial"
    args = ["cams", pipeline["cls"], pipeline["art"] / "train.h5", "--tta", "d4", "--gallery",
            0, "-b", 4, "-q", "-o", out]
    done, kids = _signal_when(partial.exists, signal.SIGTERM, False, args, tmp_path)
    _assert_clean_stop(done, 143, TERMINATED, kids)
    assert partial.exists() and not out.exists()
    again = run(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert out.exists() and not partial.exists()


def test_ctrl_c_on_a_slide_folder_ends_it_and_its_workers(pipeline: dict[str, Path],
                                                          tmp_path: Path):
    """Ctrl-C (SIGINT to the process group) while predict reads slides in worker processes:
    the workers say nothing and end, the slide in progress leaves nothing half-written."""
    out = tmp_path / "out"
    args = ["predict", pipeline["seg"], pipeline["slides"], "--classifier", pipeline["cls"],
            "--mpp", 1.0, "--stride", 16, "--workers", 2, "-q", "-o", out]
    done, kids = _signal_when((out / ".a.h5.partial").exists, signal.SIGINT, True, args,
                              tmp_path, settle=1.0)  # the workers are reading slide a
    assert kids, "predict had no reading workers to end"
    _assert_clean_stop(done, 130, INTERRUPTED, kids)
    assert not (out / "a.h5").exists()
    again = run(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert (out / "a.h5").exists() and (out / "b.h5").exists()


def test_sigterm_to_tile_on_a_slide_folder_leaves_no_partial_file(pipeline: dict[str, Path],
                                                                  tmp_path: Path):
    """tile's outputs are redone, not resumed: a stopped run leaves no hidden partial file,
    neither of the slide it was writing nor of the next one its stream had opened ahead."""
    out = tmp_path / "tiles"
    # 16 px patches: four times the writing of 32 px, so the run still goes on at the signal
    args = ["tile", pipeline["slides"], "--mpp", 1.0, "--patch-size", 16, "--min-tissue", 0,
            "--workers", 2, "-q", "-o", out]
    done, kids = _signal_when((out / ".a.h5.partial").exists, signal.SIGTERM, True, args,
                              tmp_path, settle=0.2)
    _assert_clean_stop(done, 143, TERMINATED, kids)
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    again = run(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert (out / "a.h5").exists() and (out / "b.h5").exists()


def test_a_preempted_training_job_resumes(pipeline: dict[str, Path], tmp_path: Path):
    """A scheduler pre-empting train-cls with DataLoader workers (SIGTERM to every process of
    the job): a clean stop after the last saved epoch, and ``--resume`` finishes the run."""
    run_dir = tmp_path / "cls"
    args = ["train-cls", pipeline["art"] / "train.h5", "--backbone", "resnet18", "--epochs", 3,
            "-b", 10, "-j", 2, "-q", "-o", run_dir]
    done, kids = _signal_when((run_dir / "checkpoint.pt").exists, signal.SIGTERM, True, args,
                              tmp_path)
    assert kids, "train-cls had no loader workers to end"
    _assert_clean_stop(done, 143, TERMINATED, kids)
    again = run(*args, "--resume", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    epochs = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(epochs) == 3


def _controlling_terminal() -> None:
    """In the child, in a session of its own: make the terminal on its stdin the session's
    controlling terminal, as a login shell's is, with SIGHUP's default action there (a test
    run started under ``nohup`` would hand down an ignored SIGHUP, which the command rightly
    keeps ignoring)."""
    _as_in_a_terminal()
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def test_a_closed_terminal_stops_a_slide_folder_cleanly(pipeline: dict[str, Path],
                                                        tmp_path: Path):
    """The terminal (an SSH session) closes while predict, showing its progress there, reads
    slides in worker processes: the kernel hangs the terminal up (SIGHUP), every later write
    to it fails, and the command must still stop as on Ctrl-C (exit 129, not a crash on the
    dead terminal), end its workers, and leave what a rerun redoes."""
    out = tmp_path / "out"
    args = ["predict", pipeline["seg"], pipeline["slides"], "--classifier", pipeline["cls"],
            "--mpp", 1.0, "--stride", 16, "--workers", 2, "-o", out]
    terminal, child_end = pty.openpty()
    proc = subprocess.Popen(argv(*args), cwd=tmp_path, stdin=child_end, stdout=child_end,
                            stderr=child_end, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)},
                            preexec_fn=_controlling_terminal)
    os.close(child_end)
    closing = threading.Event()

    def show() -> None:  # the terminal reads what the command draws, until it closes
        while not closing.is_set():
            if select.select([terminal], [], [], 0.05)[0]:
                try:
                    os.read(terminal, 65536)
                except OSError:
                    return

    reader = threading.Thread(target=show, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while not (out / ".a.h5.partial").exists():
            assert proc.poll() is None, "ended before the terminal closed"
            assert time.monotonic() < deadline, "never started writing"
            time.sleep(0.05)
        time.sleep(1.0)  # the workers are reading slide a
        assert proc.poll() is None, "ended before the terminal closed"
        kids = children(proc.pid)
        assert kids, "predict had no reading workers to end"
    finally:
        closing.set()
        reader.join()
        os.close(terminal)  # the last reference: the kernel hangs the terminal up
    assert proc.wait(timeout=120) == 129
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in kids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in kids if alive(pid)]
    assert not (out / "a.h5").exists()
    again = run(*args, "-q", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert (out / "a.h5").exists() and (out / "b.h5").exists()

