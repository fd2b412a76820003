"""The one HDF5 artifact format every histoseg command reads and writes.

Documented in docs/artifacts.md. One file holds N patches of one size plus whatever is known
about them: multi-hot labels, masks, names, level-0 coordinates, and per-patch datasets added by
later stages. Writers go through a hidden temporary file that is renamed only when complete, so
an interrupted command never leaves a file a reader would accept.

Two kinds share the format (attribute ``kind``; absent means ``patches``): a ``patches``
artifact holds the pixels; a derived kind such as ``pseudo-masks`` holds per-patch results only
and links to the patches artifact it was computed from (``input_path``, plus a hash of the
input's names in order, checked by :func:`open_linked`), so patches are never copied.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from isal import isal_zlib

from histoseg_cli import __version__
from histoseg_cli.core.errors import InputError

SCHEMA_NAME = "histoseg.patches"
SCHEMA_VERSION = 1

#: Datasets with one row per patch that the schema defines itself.
CORE_DATASETS = ("patches", "labels", "masks", "names", "coords")

#: Artifact kinds and the dataset each must hold besides ``names``.
KINDS = {"patches": "patches", "pseudo-masks": "pseudo_masks"}


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
    kind: str = "patches"  # one of KINDS
    link: InputLink | None = None  # the patches artifact a derived kind was computed from

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def resolved_palette(self) -> np.ndarray:
        """The palette, or a deterministic default when none was recorded."""
        if self.palette is not None:
            return np.asarray(self.palette, dtype=np.uint8)
        return default_palette(self.num_classes)


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


@dataclass(frozen=True)
class InputLink:
    """Where a derived artifact's patches live, and which names in which order they had."""

    path: str
    names_sha256: str
    num_patches: int

    @classmethod
    def to(cls, artifact: Artifact) -> InputLink:
        """A link to ``artifact`` (absolute path, hash of its names in order)."""
        names = artifact.names()
        return cls(str(artifact.path.resolve()), names_digest(names), len(names))


def names_digest(names: list[str]) -> str:
    """SHA-256 of the patch names in order (one per line): the identity of a patch list."""
    h = hashlib.sha256()
    for name in names:
        h.update(name.encode("utf-8") + b"\n")
    return h.hexdigest()


@dataclass(frozen=True)
class ItemSpec:
    """Shape (without the leading N) and dtype of a per-patch dataset."""

    shape: tuple[int, ...]
    dtype: str


#: ``compression`` values whose ``patches`` chunks :func:`encode_patches` can make outside
#: the writer (e.g. in worker processes) for :meth:`ArtifactWriter.append_encoded`.
ENCODABLE = (None, "gzip")


def encode_patches(patches: np.ndarray, compression: str | None) -> list[bytes]:
    """Each patch of ``patches`` (B, H, W, 3) uint8 as the stored bytes of its chunk.

    ``gzip`` chunks are zlib streams, the format of HDF5's deflate filter, made by ISA-L
    (``isal``) at level 1: about 4x faster than zlib's fastest mode (Huffman only) for the same
    saving on stain-noisy patches, and any deflate reader decodes them. ``None``: raw bytes.
    """
    if compression not in ENCODABLE:
        raise ValueError(f"cannot pre-encode {compression} chunks (encodable: {ENCODABLE})")
    raw = (memoryview(np.ascontiguousarray(patch, dtype=np.uint8)).cast("B") for patch in patches)
    if compression is None:
        return [bytes(r) for r in raw]
    return [isal_zlib.compress(r, 1) for r in raw]


def _partial_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.partial")


class ArtifactWriter:
    """Append patches to a new artifact; the file appears under its name only on ``close``.

    With ``resumable=True`` an interrupted write keeps its hidden ``.NAME.partial`` file and a
    later writer with the same layout continues after the last committed row
    (``rows_done``); otherwise the partial file is removed on failure.
    """

    def __init__(
        self,
        path: str | Path,
        meta: ArtifactMeta,
        *,
        labels: bool = False,
        masks: bool = False,
        coords: bool = False,
        extra_datasets: dict[str, ItemSpec] | None = None,
        compression: str | None = "gzip",
        resumable: bool = False,
    ) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise InputError(self.path, "is a folder; expected the artifact's file name (.h5)")
        self.meta = meta
        self.resumable = resumable
        if meta.kind not in KINDS:
            raise ValueError(f"unknown artifact kind {meta.kind!r}; one of {sorted(KINDS)}")
        if (meta.kind == "patches") == (meta.link is not None):
            raise ValueError("a patches artifact has no input link; a derived kind needs one")
        p = meta.patch_size
        c = meta.num_classes
        self._specs: dict[str, ItemSpec] = {}
        if meta.kind == "patches":
            self._specs["patches"] = ItemSpec((p, p, 3), "uint8")
        if labels:
            self._specs["labels"] = ItemSpec((c,), "uint8")
        if masks:
            self._specs["masks"] = ItemSpec((p, p), "uint8")
        if coords:
            self._specs["coords"] = ItemSpec((2,), "int64")
        for name, spec in (extra_datasets or {}).items():
            if name in CORE_DATASETS:
                raise ValueError(f"{name} is a core dataset")
            self._specs[name] = spec
        self.compression = compression
        if KINDS[meta.kind] not in self._specs:
            raise ValueError(f"a {meta.kind} artifact needs the '{KINDS[meta.kind]}' dataset")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = _partial_path(self.path)
        self.rows_done = 0
        if resumable and self._tmp.exists() and self._can_resume():
            self._file = h5py.File(self._tmp, "a")
            self.rows_done = int(self._file.attrs["rows_committed"])
            for name in [*self._specs, "names"]:
                self._file[name].resize(self.rows_done, axis=0)
        else:
            self._tmp.unlink(missing_ok=True)
            self._file = h5py.File(self._tmp, "w")
            self._create()

    def _can_resume(self) -> bool:
        try:
            with h5py.File(self._tmp, "r") as f:
                layout = json.loads(f.attrs.get("layout", "{}"))
                mine = json.loads(json.dumps(self._layout()))
                return layout == mine and "rows_committed" in f.attrs
        except OSError:
            return False

    def _layout(self) -> dict[str, Any]:
        """What must match for a partial file to be continued: datasets, classes, settings."""
        specs = {k: [list(v.shape), v.dtype] for k, v in self._specs.items()}
        link = None if self.meta.link is None else asdict(self.meta.link)
        return {"specs": specs, "class_names": list(self.meta.class_names),
                "compression": self.compression, "kind": self.meta.kind, "link": link,
                "extra": self.meta.extra}

    def _create(self) -> None:
        f = self._file
        compression = self.compression
        opts: dict[str, Any] = {}
        if compression == "gzip":
            opts = {"compression": "gzip", "compression_opts": 1}
        elif compression:
            opts = {"compression": compression}
        for name, spec in self._specs.items():
            per_item = int(np.prod(spec.shape)) > 64
            f.create_dataset(
                name,
                shape=(0, *spec.shape),
                maxshape=(None, *spec.shape),
                dtype=spec.dtype,
                chunks=(1, *spec.shape) if per_item else (1024, *spec.shape),
                **(opts if per_item else {}),
            )
        f.create_dataset("names", shape=(0,), maxshape=(None,), dtype=h5py.string_dtype(),
                         chunks=(1024,))
        f.attrs["layout"] = json.dumps(self._layout())
        f.attrs["rows_committed"] = 0
        _write_meta(f, self.meta)

    def append(self, patches: np.ndarray, names: list[str], **rows: np.ndarray) -> None:
        """Append a batch: ``patches`` (B,H,W,3) uint8, ``names`` and every declared dataset.

        gzip and raw patches are encoded by :func:`encode_patches` and stored by direct chunk
        write (ISA-L's deflate is several times faster than the HDF5 filter's zlib)."""
        patches = np.asarray(patches)
        if self.compression not in ENCODABLE:
            self.append_rows(names, patches=patches, **rows)
            return
        expected = (len(names), *self._specs["patches"].shape)
        if patches.shape != expected:
            raise ValueError(f"patches: expected shape {expected}, got {patches.shape}")
        self.append_encoded(encode_patches(patches, self.compression), names, **rows)

    def append_rows(self, names: list[str], **rows: np.ndarray) -> None:
        """Append a batch of ``names`` and one array per declared dataset (any kind)."""
        self._append(rows, names)

    def append_encoded(self, chunks: Sequence[bytes], names: list[str],
                       **rows: np.ndarray) -> None:
        """Like :meth:`append`, with each patch given as its chunk already encoded by
        :func:`encode_patches` with this writer's ``compression`` (e.g. in worker processes);
        the chunks are stored as they are (HDF5 direct chunk write)."""
        if self.compression not in ENCODABLE:
            raise ValueError(f"patches of a {self.compression} writer cannot be pre-encoded")
        if "patches" in rows or len(chunks) != len(names):
            raise ValueError(f"patches: expected {len(names)} encoded chunks and no array")
        size = int(np.prod(self._specs["patches"].shape))
        if self.compression is None and any(len(c) != size for c in chunks):
            raise ValueError(f"patches: raw chunks must have {size} bytes")
        self._append(rows, names, chunks)

    def _append(self, batch: dict[str, Any], names: list[str],
                chunks: Sequence[bytes] | None = None) -> None:
        batch = {k: np.asarray(v) for k, v in batch.items()}
        given = set(batch) | ({"patches"} if chunks is not None else set())
        missing = set(self._specs) - given
        unknown = given - set(self._specs)
        if missing or unknown:
            raise ValueError(f"append needs {sorted(self._specs)}; missing {sorted(missing)}, "
                             f"unknown {sorted(unknown)}")
        b = len(names)
        start = self.rows_done
        for name, data in batch.items():
            spec = self._specs[name]
            if data.shape != (b, *spec.shape):
                raise ValueError(f"{name}: expected shape {(b, *spec.shape)}, got {data.shape}")
            ds = self._file[name]
            ds.resize(start + b, axis=0)
            ds[start:] = data.astype(spec.dtype, copy=False)
        if chunks is not None:
            ds = self._file["patches"]
            ds.resize(start + b, axis=0)
            tail = (0,) * (ds.ndim - 1)
            for i, chunk in enumerate(chunks):
                ds.id.write_direct_chunk((start + i, *tail), chunk, 0)
        ds = self._file["names"]
        ds.resize(start + b, axis=0)
        ds[start:] = np.array(names, dtype=object)
        self.rows_done = start + b
        self._file.attrs["rows_committed"] = self.rows_done
        if self.resumable:
            self._file.flush()

    def committed(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows ``start:stop`` of a dataset already written (e.g. kept from a resumed run)."""
        stop = self.rows_done if stop is None else min(stop, self.rows_done)
        return self._file[name][start:stop]

    def set_attrs(self, dataset: str, **attrs: Any) -> None:
        """Attach attributes to one dataset (e.g. CLAM-compatible ``coords`` attributes)."""
        for key, value in attrs.items():
            self._file[dataset].attrs[key] = value

    def close(self) -> Path:
        """Mark the file complete and move it to its final name."""
        f = self._file
        f.attrs["complete"] = True
        f.attrs["num_patches"] = self.rows_done
        del f.attrs["rows_committed"]
        del f.attrs["layout"]
        f.close()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Give up: remove the partial file unless it is resumable."""
        if self._file.id.valid:
            self._file.close()
        if not self.resumable:
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> ArtifactWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _write_meta(f: h5py.File, meta: ArtifactMeta) -> None:
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


class Artifact:
    """Read-only view of a complete artifact, validated on open.

    The HDF5 handle is opened lazily and re-opened in a new process, so an ``Artifact`` can be
    handed to DataLoader workers (each gets its own handle; random access by index is cheap
    because patches are chunked one per chunk).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._handle: h5py.File | None = None
        self._pid = -1
        try:
            f = self._validate()
        except InputError:
            self.close()
            raise
        self.meta = ArtifactMeta(
            class_names=[_as_str(s) for s in f.attrs["class_names"]],
            patch_size=int(f.attrs["patch_size"]),
            palette=np.asarray(f.attrs["palette"], dtype=np.uint8),
            mpp=float(f.attrs["mpp"]) if "mpp" in f.attrs else None,
            magnification=float(f.attrs["magnification"]) if "magnification" in f.attrs else None,
            source=_as_str(f.attrs.get("source", "")),
            created_by=_as_str(f.attrs.get("created_by", "")),
            extra=json.loads(_as_str(f.attrs.get("extra", "{}"))),
            kind=_as_str(f.attrs.get("kind", "patches")),
            link=_read_link(f),
        )
        self.datasets = frozenset(k for k in f.keys() if isinstance(f[k], h5py.Dataset))

    def _fail(self, expected: str) -> InputError:
        return InputError(self.path, expected)

    def _validate(self) -> h5py.File:
        if not self.path.exists():
            raise self._fail("no such file (expected a histoseg artifact .h5)")
        if self.path.is_dir():
            raise self._fail("is a directory (expected a histoseg artifact .h5 file)")
        if not h5py.is_hdf5(self.path):
            raise self._fail("not an HDF5 file (expected a histoseg artifact .h5)")
        try:
            f = self.file
            attrs = dict(f.attrs)
        except (OSError, KeyError) as err:
            raise self._fail(f"corrupt or truncated HDF5 file ({err})") from None
        if _as_str(attrs.get("schema", "")) != SCHEMA_NAME:
            raise self._fail(f"not a histoseg artifact (schema attribute is not '{SCHEMA_NAME}')")
        version = int(attrs.get("schema_version", -1))
        if version > SCHEMA_VERSION:
            raise self._fail(f"written by a newer histoseg (schema version {version}; this "
                             f"version reads up to {SCHEMA_VERSION}): upgrade histoseg")
        if version < 1:
            raise self._fail("invalid schema_version attribute")
        if not attrs.get("complete", False):
            raise self._fail("incomplete artifact (its writer was interrupted); rerun the command")
        for key in ("class_names", "patch_size", "palette"):
            if key not in attrs:
                raise self._fail(f"artifact lacks the '{key}' attribute")
        kind = _as_str(attrs.get("kind", "patches"))
        if kind not in KINDS:
            raise self._fail(f"unknown artifact kind '{kind}' (this histoseg reads "
                             f"{', '.join(KINDS)}): upgrade histoseg")
        if kind != "patches" and "input_path" not in attrs:
            raise self._fail(f"{kind} artifact lacks the 'input_path' attribute")
        if KINDS[kind] not in f or "names" not in f:
            raise self._fail(f"artifact lacks the '{KINDS[kind]}' or 'names' dataset")
        n = f["names"].shape[0]
        p = int(attrs["patch_size"])
        c = len(attrs["class_names"])
        expected = {"patches": (n, p, p, 3), "names": (n,), "labels": (n, c),
                    "masks": (n, p, p), "coords": (n, 2)}
        if "pseudo_masks" in f:
            expected["pseudo_masks"] = (n, f["pseudo_masks"].shape[1], p, p)
        for name, shape in expected.items():
            if name in f and f[name].shape != shape:
                raise self._fail(f"dataset '{name}' has shape {f[name].shape}, expected {shape}")
        for name in f:
            if isinstance(f[name], h5py.Dataset) and f[name].shape[:1] != (n,):
                raise self._fail(f"dataset '{name}' has {f[name].shape[0]} rows, expected {n}")
        return f

    @property
    def file(self) -> h5py.File:
        """The HDF5 handle of this process (opened on first use, re-opened after fork)."""
        if self._handle is None or self._pid != os.getpid():
            self._handle = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._handle

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"] = None
        state["_pid"] = -1
        return state

    def close(self) -> None:
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle = None

    def __enter__(self) -> Artifact:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __len__(self) -> int:
        return int(self.file["names"].shape[0])

    @property
    def kind(self) -> str:
        return self.meta.kind

    @property
    def class_names(self) -> list[str]:
        return self.meta.class_names

    @property
    def num_classes(self) -> int:
        return self.meta.num_classes

    @property
    def has_labels(self) -> bool:
        return "labels" in self.datasets

    @property
    def has_masks(self) -> bool:
        return "masks" in self.datasets

    @property
    def has_coords(self) -> bool:
        return "coords" in self.datasets

    def names(self) -> list[str]:
        return [_as_str(s) for s in self.file["names"][:]]

    def labels(self) -> np.ndarray:
        """All multi-hot labels (N, C) uint8; a clear error if the artifact has none."""
        if not self.has_labels:
            raise self._fail("has no 'labels' dataset (expected patch-level labels)")
        return self.file["labels"][:]

    def patch(self, index: int) -> np.ndarray:
        return self.dataset("patches")[index]

    def mask(self, index: int) -> np.ndarray:
        if not self.has_masks:
            raise self._fail("has no 'masks' dataset (expected pixel masks)")
        return self.file["masks"][index]

    def dataset(self, name: str) -> h5py.Dataset:
        """A per-patch dataset by name, with a clear error when it is absent."""
        if name not in self.datasets:
            raise self._fail(f"has no '{name}' dataset")
        return self.file[name]


def _read_link(f: h5py.File) -> InputLink | None:
    if "input_path" not in f.attrs:
        return None
    return InputLink(_as_str(f.attrs["input_path"]), _as_str(f.attrs["input_names_sha256"]),
                     int(f.attrs["input_num_patches"]))


def open_linked(path: str | Path, input_path: str | Path | None = None,
                kind: str = "pseudo-masks") -> tuple[Artifact, Artifact]:
    """Open a derived artifact and the patches artifact it links to, checked to match.

    The input is ``input_path`` when given, else the recorded path, else a file of the same
    name beside ``path`` (both files moved together). Its names, in order, must be those the
    derived artifact was computed from; otherwise an ``InputError`` says which differ.
    """
    derived = Artifact(path)
    if derived.kind != kind:
        raise InputError(path, f"is a '{derived.kind}' artifact; expected '{kind}' (written by "
                         f"histoseg cams)")
    link = derived.meta.link
    assert link is not None  # validated on open
    candidates = ([Path(input_path)] if input_path is not None
                  else [Path(link.path), derived.path.parent / Path(link.path).name])
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise InputError(path, f"its input {link.path} is missing; pass the patches artifact "
                         "it was computed from explicitly")
    source = Artifact(found)
    if source.kind != "patches":
        raise InputError(found, f"is a '{source.kind}' artifact; expected the patches artifact "
                         f"{derived.path.name} was computed from")
    names = source.names()
    if len(names) != link.num_patches or names_digest(names) != link.names_sha256:
        mine = derived.names()
        first = next((i for i, (a, b) in enumerate(zip(mine, names)) if a != b),
                     min(len(mine), len(names)))
        raise InputError(found, f"does not match {derived.path.name}: it has {len(names)} "
                         f"patches, the {kind} were computed from {link.num_patches}; first "
                         f"difference at row {first}. Rerun histoseg cams on this input")
    return derived, source


def _as_str(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
