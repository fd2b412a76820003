"""Atomic writes: what a writer killed mid-write leaves is swept by the next writer of the same
output on this machine, and nothing a live writer or another machine owns is touched."""

import os
import signal
import subprocess
import sys

from histoseg_cli.core.atomic import (atomic_path, sweep_killed_writers, temporary_path,
                                      write_bytes_atomic)

WRITER = """
import sys, time
from histoseg_cli.core.atomic import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"half a checkpoint")
    print(tmp, flush=True)
    time.sleep(60)
"""


def _killed_mid_write(target):
    """Start a real writer of ``target``, SIGKILL it inside the write; what it left."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE,
                            text=True)
    left = proc.stdout.readline().strip()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return left


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_next_writer_sweeps_what_a_killed_one_left(tmp_path):
    target = tmp_path / "checkpoint.pt"
    left = _killed_mid_write(target)
    assert os.path.exists(left) and not target.exists()
    # a writer that is still running, another machine's (a shared file system), and another
    # output's leftover all stay
    host = temporary_path(target).name.split("-")[-2]
    live = tmp_path / f".checkpoint.pt.tmp-{host}-{os.getppid()}"
    live.write_bytes(b"x")
    elsewhere = tmp_path / ".checkpoint.pt.tmp-othernode-123"
    elsewhere.write_bytes(b"x")
    other = tmp_path / f".metrics.json.tmp-{host}-{_dead_pid()}"
    other.write_bytes(b"x")

    write_bytes_atomic(target, b"whole", sweep=True)
    assert target.read_bytes() == b"whole"
    assert not os.path.exists(left)
    assert live.exists() and elsewhere.exists() and other.exists()


def test_no_sweep_unless_asked(tmp_path):
    """Small files, many to a folder (label PNGs), do not list the folder at each write."""
    target = tmp_path / "a.png"
    left = _killed_mid_write(target)
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"png")
    assert os.path.exists(left)
    assert [p.name for p in sweep_killed_writers(target)] == [os.path.basename(left)]
    assert not os.path.exists(left)


def test_a_writer_does_not_sweep_its_own_temporary(tmp_path):
    target = tmp_path / "engine.plan"
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"building")
        assert sweep_killed_writers(target) == [] and tmp.exists()
    assert target.read_bytes() == b"building"
