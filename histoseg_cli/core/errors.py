"""Exceptions the CLI turns into one-line messages and exit codes.

Core code raises these for problems the user can fix (bad file, wrong schema, bad label);
anything else is a bug and is reported with a traceback under ``--verbose``.
"""

from __future__ import annotations

import errno
from pathlib import Path


class HistosegError(Exception):
    """A runtime error caused by the input or environment; exit code 1."""

    exit_code = 1


class InputError(HistosegError):
    """An input file is missing, unreadable or not what was expected."""

    def __init__(self, path: str | Path | None, expected: str) -> None:
        self.path = None if path is None else Path(path)
        self.expected = expected
        super().__init__(f"{path}: {expected}" if path is not None else expected)


class UsageError(HistosegError):
    """A bad option value or options that do not fit together; exit code 2 like other usage
    errors. ``option`` names the flag (``--epochs``) so the message starts with it."""

    exit_code = 2

    def __init__(self, message: str, option: str | None = None) -> None:
        self.option = option
        super().__init__(f"{option}: {message}" if option else message)


#: What an operating-system error means for the path it names, in the project's words.
_OS_MEANINGS = {
    errno.EEXIST: "already exists (and is not what was expected there)",
    errno.ENOTDIR: "a part of this path is a file, not a folder",
    errno.EISDIR: "is a folder; expected a file",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOSPC: "no space left on the device",
    errno.EROFS: "on a read-only file system",
    errno.ENOENT: "no such file or folder",
    errno.ENAMETOOLONG: "name too long",
    errno.EDQUOT: "disk quota exceeded",
}


def describe_os_error(err: OSError) -> str:
    """One line for an ``OSError`` that reached the command: the path and what went wrong."""
    meaning = _OS_MEANINGS.get(err.errno or -1, err.strerror or str(err))
    if err.filename is None:
        return meaning
    where = str(err.filename) + (f" -> {err.filename2}" if err.filename2 else "")
    return f"{where}: {meaning}"
