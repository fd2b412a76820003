"""What made an output: the models it came from (content hashes) and the settings that change
it, recorded with the output so a rerun can tell whether it may keep it.

A rerun into the same place keeps an output made the same way (that is how folder runs
resume) and refuses, in one line, to keep or silently replace one made by another model or
other settings: ``--overwrite`` replaces it, another ``-o`` keeps both.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from histoseg_cli.core.errors import HistosegError

#: Key under which outputs record their provenance (HDF5 ``extra``, PNG text chunk, JSON).
KEY = "provenance"


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes (models: a checkpoint, an exported network)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    if isinstance(value, str) and len(value) == 64:  # a hash: its head is enough to tell
        return value[:12]
    return text if len(text) <= 40 else text[:37] + "..."


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as ``a.b`` keys, so a difference names the setting that differs."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@dataclass(frozen=True)
class Provenance:
    """The command, model hashes and result-changing settings behind one output."""

    command: str
    models: dict[str, str | None]  # role -> SHA-256 of the model file (None: not used)
    settings: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"command": self.command, "models": dict(self.models),
                "settings": dict(self.settings)}

    def with_settings(self, settings: dict[str, Any]) -> Provenance:
        """This provenance with ``settings`` set (one output's share of a run's settings)."""
        return replace(self, settings={**self.settings, **settings})

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True, default=str)

    def key(self) -> str:
        """A short digest: equal for outputs made the same way (manifests record it)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:12]

    def differences(self, recorded: dict[str, Any] | None) -> list[str]:
        """What differs between ``recorded`` (read from an output) and this, in words; empty
        when the output was made the same way."""
        if not recorded:
            return ["it records nothing of what made it (an older histoseg)"]
        found = []
        for section in ("models", "settings"):
            mine, theirs = _flat(self.as_dict()[section]), _flat(recorded.get(section) or {})
            for key in sorted(set(mine) | set(theirs)):
                if json.dumps(mine.get(key), default=str) != json.dumps(theirs.get(key),
                                                                        default=str):
                    label = f"{key} model" if section == "models" else key
                    found.append(f"{label} {_short(theirs.get(key))} -> {_short(mine.get(key))}")
        if recorded.get("command", self.command) != self.command:
            found.insert(0, f"made by {recorded.get('command')}, not {self.command}")
        return found


def parse(text: str | bytes | None) -> dict[str, Any] | None:
    """A recorded provenance (JSON), or None when absent or unreadable."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except (ValueError, TypeError):
        return None
    return value if isinstance(value, dict) else None


class StaleOutputs(HistosegError):
    """Outputs in the way that another model or other settings made (exit 1)."""

    def __init__(self, stale: list[tuple[Path, list[str]]]) -> None:
        first, why = stale[0]
        self.paths = [path for path, _ in stale]
        more = f" (and {len(stale) - 1} more output(s) beside it)" if len(stale) > 1 else ""
        super().__init__(f"{first}{more}: made by another model or other settings "
                         f"({'; '.join(why)}); pass {{overwrite}} to replace, or another "
                         "{output}")


#: What a run would record for an output, given what the output records (a slide's level-0
#: resolution setting applies to some slides only); or the one provenance of all its outputs.
Wanted = Provenance | Callable[[dict[str, Any] | None], Provenance]


def check_kept(outputs: list[tuple[Path, dict[str, Any] | None]], wanted: Wanted) -> None:
    """Refuse (one line, before any work) when a complete output that a run would keep or
    replace was made otherwise. ``outputs``: (path, the provenance it records)."""
    def made(recorded: dict[str, Any] | None) -> Provenance:
        return wanted if isinstance(wanted, Provenance) else wanted(recorded)

    stale = [(path, why) for path, recorded in outputs
             if (why := made(recorded).differences(recorded))]
    if stale:
        raise StaleOutputs(stale)
