"""Atomic file output: write beside the target, rename on success.

An interrupted command must never leave a file that a later command would accept, so every
output goes through a temporary name in the same directory (same file system, so the final
``os.replace`` is atomic) and is removed again if the writer fails.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path


def temporary_path(target: Path, tag: str = "tmp") -> Path:
    """The hidden sibling used while ``target`` is being written."""
    return target.with_name(f".{target.name}.{tag}-{os.getpid()}")


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; rename it to ``target`` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(target)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(target: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
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
