"""The HDF5 artifact format's file-level part: schema, metadata, links between artifacts.

Documented in docs/artifacts.md. One file holds N rows of one patch size plus whatever is known
about them. File attributes carry the schema name and version, the classes and their colours,
the resolution, the producing command and the artifact's kind (see :mod:`.kinds`). A derived
kind links to the patches artifact it was computed from instead of copying it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import h5py
import numpy as np

from histoseg_cli import __version__


class NamedRows(Protocol):
    """What a link is made from: an artifact's path and its patch names (``Artifact``)."""

    path: Path

    def names(self) -> list[str]: ...

SCHEMA_NAME = "histoseg.patches"
SCHEMA_VERSION = 1
#: File name suffixes of artifacts, as folders of them are listed.
ARTIFACT_SUFFIXES = (".h5", ".hdf5")


def default_palette(num_classes: int) -> np.ndarray:
    """Distinct colours for ``num_classes`` classes plus white for background."""
    base = np.array(
        [[205, 51, 51], [0, 255, 0], [65, 105, 225], [255, 165, 0], [153, 0, 255],
         [0, 200, 200], [255, 0, 255], [128, 128, 0], [0, 128, 128], [128, 0, 0]],
        dtype=np.uint8,
    )
    rng = np.random.default_rng(0)
    extra = rng.integers(0, 255, size=(max(0, num_classes - len(base)), 3), dtype=np.uint8)
    colours = np.concatenate([base, extra])[:num_classes]
    return np.concatenate([colours, np.array([[255, 255, 255]], dtype=np.uint8)])


def names_digest(names: list[str]) -> str:
    """SHA-256 of the patch names in order (one per line): the identity of a patch list."""
    h = hashlib.sha256()
    for name in names:
        h.update(name.encode("utf-8") + b"\n")
    return h.hexdigest()


@dataclass(frozen=True)
class InputLink:
    """Where a derived artifact's patches live, and which names in which order they had."""

    path: str
    names_sha256: str
    num_patches: int

    @classmethod
    def to(cls, artifact: NamedRows) -> InputLink:
        """A link to ``artifact`` (absolute path, hash of its names in order)."""
        names = artifact.names()
        return cls(str(artifact.path.resolve()), names_digest(names), len(names))


@dataclass
class ArtifactMeta:
    """File-level attributes of an artifact."""

    class_names: list[str]
    patch_size: int
    palette: np.ndarray | None = None  # (C + 1, 3) uint8; the last row colours background
    mpp: float | None = None
    magnification: float | None = None
    source: str = ""
    created_by: str = ""  # producing command, e.g. "tile"
    extra: dict[str, Any] = field(default_factory=dict)  # JSON-serialisable, stage-specific
    kind: str = "patches"  # a registered kind (see .kinds)
    link: InputLink | None = None  # the patches artifact a derived kind was computed from

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def resolved_palette(self) -> np.ndarray:
        """The palette, or a deterministic default when none was recorded."""
        if self.palette is not None:
            return np.asarray(self.palette, dtype=np.uint8)
        return default_palette(self.num_classes)


def as_str(value: Any) -> str:
    """HDF5 string attributes come back as ``bytes`` or ``str`` depending on how they were
    written; always ``str`` here."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def write_meta(f: h5py.File, meta: ArtifactMeta) -> None:
    """Store ``meta`` as file attributes."""
    f.attrs["schema"] = SCHEMA_NAME
    f.attrs["schema_version"] = SCHEMA_VERSION
    f.attrs["class_names"] = np.array(meta.class_names, dtype=h5py.string_dtype())
    f.attrs["palette"] = meta.resolved_palette()
    f.attrs["patch_size"] = int(meta.patch_size)
    if meta.mpp is not None:
        f.attrs["mpp"] = float(meta.mpp)
    if meta.magnification is not None:
        f.attrs["magnification"] = float(meta.magnification)
    f.attrs["source"] = str(meta.source)
    f.attrs["created_by"] = f"histoseg {meta.created_by} {__version__}".replace("  ", " ")
    f.attrs["created_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    f.attrs["extra"] = json.dumps(meta.extra)
    f.attrs["kind"] = meta.kind
    if meta.link is not None:
        f.attrs["input_path"] = meta.link.path
        f.attrs["input_names_sha256"] = meta.link.names_sha256
        f.attrs["input_num_patches"] = int(meta.link.num_patches)


def read_meta(f: h5py.File) -> ArtifactMeta:
    """The metadata of an open, validated file."""
    attrs = f.attrs
    link = None
    if "input_path" in attrs:
        link = InputLink(as_str(attrs["input_path"]), as_str(attrs["input_names_sha256"]),
                         int(attrs["input_num_patches"]))
    return ArtifactMeta(
        class_names=[as_str(s) for s in attrs["class_names"]],
        patch_size=int(attrs["patch_size"]),
        palette=np.asarray(attrs["palette"], dtype=np.uint8),
        mpp=float(attrs["mpp"]) if "mpp" in attrs else None,
        magnification=float(attrs["magnification"]) if "magnification" in attrs else None,
        source=as_str(attrs.get("source", "")),
        created_by=as_str(attrs.get("created_by", "")),
        extra=json.loads(as_str(attrs.get("extra", "{}"))),
        kind=as_str(attrs.get("kind", "patches")),
        link=link,
    )
