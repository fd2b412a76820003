"""Exceptions the CLI turns into one-line messages and exit codes.

Core code raises these for problems the user can fix (bad file, wrong schema, bad label);
anything else is a bug and is reported with a traceback under ``--verbose``.

The core does not know how a front end spells its options. Its messages (and logs) refer to a
setting by its request field in braces, ``{batch_size}``; ``str(err)`` shows the field's name,
and the CLI shows the flag it maps the field to (see :func:`render_settings`).
"""

from __future__ import annotations

import errno
import re
from collections.abc import Callable
from pathlib import Path

_SETTING = re.compile(r"\{([a-z][a-z0-9_]*)\}")


def render_settings(text: str, name_of: Callable[[str], str | None] = lambda name: name) -> str:
    """``text`` with each ``{setting}`` replaced by ``name_of(setting)``; a setting it does not
    know (``None``) keeps its braces, so other text in braces passes through."""
    return _SETTING.sub(lambda m: name_of(m.group(1)) or m.group(0), text)


class HistosegError(Exception):
    """A runtime error caused by the input or environment; exit code 1. Its message may name
    settings as ``{field}``."""

    exit_code = 1

    def __init__(self, message: str, where: str = "") -> None:
        self.template, self.where = message, where  # ``where`` (a path) is never rendered
        super().__init__(where + message)

    def __str__(self) -> str:
        return self.render(lambda name: name)

    def render(self, name_of: Callable[[str], str | None]) -> str:
        """The message with each setting named by ``name_of`` (a front end's flag)."""
        return self.where + render_settings(self.template, name_of)


class InputError(HistosegError):
    """An input file is missing, unreadable or not what was expected."""

    def __init__(self, path: str | Path | None, expected: str) -> None:
        self.path = None if path is None else Path(path)
        self.expected = expected
        super().__init__(expected, f"{path}: " if path is not None else "")


class UsageError(HistosegError):
    """A bad setting or settings that do not fit together; exit code 2 like other usage
    errors. ``setting`` names the field (``batch_size``) so the message starts with it."""

    exit_code = 2

    def __init__(self, message: str, setting: str | None = None) -> None:
        self.setting = setting
        super().__init__(f"{{{setting}}}: {message}" if setting else message)


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
