"""What a training run reads, once every input has been resolved to artifacts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DataSources:
    """Artifacts to train (and validate) on. ``background`` is the CAM background rule of the
    dataset layout when known; ``class_names`` is filled once the training artifact has been
    validated."""

    train: Path
    val: Path | None
    background: str | None = None
    class_names: tuple[str, ...] = ()
