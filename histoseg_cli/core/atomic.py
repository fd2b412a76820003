"""Atomic file output: write beside the target, rename on success.

An interrupted command must never leave a file that a later command would accept, so every
output goes through a temporary name in the same directory (same file system, so the final
``os.replace`` is atomic) and is removed again if the writer fails.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import re
import socket
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from histoseg_cli.core.errors import InputError

log = logging.getLogger("histoseg")


def temporary_path(target: Path, tag: str = "tmp") -> Path:
    """The hidden sibling used while ``target`` is being written, ``.NAME.TAG-HOST-PID``: the
    machine and process in the name tell a killed writer's leftover from a live writer's
    (:func:`sweep_killed_writers`)."""
    return target.with_name(f".{target.name}.{tag}-{_host()}-{os.getpid()}")


def _host() -> str:
    """This machine's name as temporary names carry it (letters and digits only)."""
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname()) or "host"


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def sweep_killed_writers(target: Path, tag: str = "tmp") -> list[Path]:
    """Remove the temporaries of ``target`` whose writer on this machine was killed (``kill
    -9``, the OOM killer, a power cut): its process is gone, so nothing will finish them, and
    a large output (a checkpoint, an engine, a slide's label TIFF) would otherwise stay as a
    hidden copy per kill. A live writer's are kept, and so are another machine's on a shared
    file system, whose processes cannot be seen from here. Returns what was removed."""
    prefix = f".{target.name}.{tag}-{_host()}-"
    removed = []
    try:
        entries = [e for e in os.scandir(target.parent) if e.name.startswith(prefix)]
    except OSError:  # no folder yet
        return removed
    for entry in entries:
        pid = entry.name[len(prefix):]
        if not pid.isdigit() or int(pid) == os.getpid() or _running(int(pid)):
            continue
        try:
            os.unlink(entry.path)
        except OSError:  # removed meanwhile, or not ours to remove
            continue
        log.info("removed %s, left by a writer that was killed", entry.path)
        removed.append(Path(entry.path))
    return removed


@contextmanager
def naming_output(target: str | Path) -> Iterator[None]:
    """Raise an OS error of the block that names no file (a writer library's full disk: HDF5,
    TIFF encoders) naming ``target`` instead, so the one-line message says which output
    failed."""
    try:
        yield
    except OSError as err:
        if err.filename is None and err.errno is not None:
            raise OSError(err.errno, err.strerror, str(target)) from err
        raise


@contextmanager
def atomic_path(target: str | Path, sweep: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; rename it to ``target`` only if the block succeeds
    (OS errors name ``target``: :func:`naming_output`). ``sweep``: first remove what killed
    writers of ``target`` left (:func:`sweep_killed_writers`; it lists the folder, so it is
    for large outputs written once a run, not for each of a folder's many small files)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if sweep:
        sweep_killed_writers(target)
    tmp = temporary_path(target)
    try:
        with naming_output(target):
            yield tmp
            os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(target: str | Path, data: bytes, sweep: bool = False) -> Path:
    """Write ``data`` to ``target`` atomically (``sweep``: as :func:`atomic_path`)."""
    with atomic_path(target, sweep) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_text_atomic(target: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    return write_bytes_atomic(target, text.encode("utf-8"))


def write_csv_atomic(target: str | Path, fields: Sequence[str],
                     rows: Iterable[Mapping[str, object]]) -> Path:
    """Write ``rows`` as CSV with a header of ``fields`` to ``target`` atomically; None and
    NaN become empty cells."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None or (isinstance(v, float) and math.isnan(v)) else v
                         for k, v in row.items()})
    return write_text_atomic(target, buffer.getvalue())


class NewPaths:
    """What a command is about to create under some folders, so that a refused run can take
    it away again: folders that do not exist yet, and files that appear in existing ones.

    Snapshot first; :meth:`remove` deletes only what was not there at the snapshot.
    """

    def __init__(self, *folders: Path) -> None:
        self.folders = [Path(f) for f in folders]
        self.before = {f: set(f.iterdir()) if f.is_dir() else None for f in self.folders}

    def remove(self) -> None:
        import shutil

        for folder in reversed(self.folders):  # inner folders were listed after outer ones
            existed = self.before[folder]
            if existed is None:
                shutil.rmtree(folder, ignore_errors=True)
            elif folder.is_dir():
                for path in set(folder.iterdir()) - existed:
                    if path.is_dir() and not path.is_symlink():
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        path.unlink(missing_ok=True)


def check_writable(target: str | Path, folder: bool = False) -> None:
    """Refuse, before any work, an output that cannot be written: a file where a folder is
    wanted (or the reverse), a parent that is a file, a place without write permission.
    ``InputError`` naming the path, in one line."""
    target = Path(target)
    if target.exists():
        if folder and not target.is_dir():
            raise InputError(target, "exists and is a file; expected a folder to write into "
                             "(remove it or pick another {output})")
        if not folder and target.is_dir():
            raise InputError(target, "is a folder; expected a file name to write")
    parent = target if folder and target.is_dir() else target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(parent, f"is a file, not a folder, so {target} cannot be written")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(parent, f"is not writable (permission denied), so {target} cannot "
                         "be written")
