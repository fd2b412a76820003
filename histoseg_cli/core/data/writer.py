"""Writing artifacts: rows appended in batches, the file named only when complete.

Writers go through a hidden ``.NAME.partial`` file that is renamed only on ``close``, so an
interrupted command never leaves a file a reader would accept; a resumable writer continues a
partial file with the same layout after its last committed row.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from isal import isal_zlib

from histoseg_cli.core.atomic import naming_output
from histoseg_cli.core.data.format import ArtifactMeta, write_meta
from histoseg_cli.core.data.kinds import CORE_DATASETS, get_kind
from histoseg_cli.core.errors import InputError


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


def _hdf5_errno(err: RuntimeError) -> int | None:
    """The operating-system error behind an HDF5 failure that h5py raised as RuntimeError
    (HDF5 records it as "errno = 28" in the message), if any."""
    found = re.search(r"errno = (\d+)", str(err))
    return int(found.group(1)) if found and int(found.group(1)) else None


def _discard_pending_writes(file: h5py.File) -> None:
    """Point an open file's descriptor at an in-memory file before it is closed and removed.

    HDF5 writes its cached chunks and metadata on close. On a full disk those writes fail,
    and a close that fails part way leaves dataset handles that crash the process (a
    use-after-free in HDF5) when Python frees them later. Written to memory instead, the
    close succeeds and the partial file is released when it is unlinked."""
    try:
        fd = file.id.get_vfd_handle()
    except Exception:  # noqa: BLE001 - a driver without a file descriptor: close as it is
        return
    if not isinstance(fd, int):
        return
    if hasattr(os, "memfd_create"):
        sink = os.memfd_create("histoseg-discard")
    else:
        sink = os.dup(tempfile.TemporaryFile().fileno())
    try:
        os.dup2(sink, fd)
    finally:
        os.close(sink)


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
        kind = get_kind(meta.kind)
        problem = kind.check_link(meta.link is not None)
        if problem:
            raise ValueError(problem)
        p = meta.patch_size
        c = meta.num_classes
        self._specs: dict[str, ItemSpec] = {}
        if kind.primary == "patches":
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
        if kind.primary not in self._specs:
            raise ValueError(f"a {meta.kind} artifact needs the '{kind.primary}' dataset")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = _partial_path(self.path)
        self._handles: dict[str, h5py.Dataset] = {}
        self._failed = False  # an HDF5 write failed: the partial file is not to be kept
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
        write_meta(f, self.meta)

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
        with self.writing():
            self._write(batch, names, chunks)

    def _write(self, batch: dict[str, np.ndarray], names: list[str],
               chunks: Sequence[bytes] | None) -> None:
        b = len(names)
        start = self.rows_done
        for name, data in batch.items():
            spec = self._specs[name]
            if data.shape != (b, *spec.shape):
                raise ValueError(f"{name}: expected shape {(b, *spec.shape)}, got {data.shape}")
            ds = self._dataset(name)
            ds.resize(start + b, axis=0)
            ds[start:] = data.astype(spec.dtype, copy=False)
        if chunks is not None:
            ds = self._dataset("patches")
            ds.resize(start + b, axis=0)
            tail = (0,) * (ds.ndim - 1)
            for i, chunk in enumerate(chunks):
                ds.id.write_direct_chunk((start + i, *tail), chunk, 0)
        ds = self._dataset("names")
        ds.resize(start + b, axis=0)
        ds[start:] = np.array(names, dtype=object)
        self.rows_done = start + b
        self._file.attrs["rows_committed"] = self.rows_done
        if self.resumable:
            self._file.flush()

    @contextmanager
    def writing(self) -> Iterator[None]:
        """HDF5 writes to this file: a failure marks the partial file as not to be continued,
        and one from the file system (h5py raises OSError or RuntimeError, naming no file)
        becomes an OS error naming this artifact, so the one-line message says which output
        and why. The writer's own writes go through it; a caller that writes the datasets of
        :meth:`create_array` itself wraps those writes in it too."""
        try:
            with naming_output(self.path):
                try:
                    yield
                except RuntimeError as err:
                    code = _hdf5_errno(err)
                    if code is None:
                        raise
                    raise OSError(code, os.strerror(code)) from err
        except (OSError, RuntimeError):
            self._failed = True
            raise

    def _dataset(self, name: str) -> h5py.Dataset:
        """One handle per dataset for the writer's life: a handle opened per batch is closed
        when Python frees it, and HDF5 writes its cached chunks then, where a full disk's
        error cannot reach the caller."""
        if name not in self._handles:
            self._handles[name] = self._file[name]
        return self._handles[name]

    def committed(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows ``start:stop`` of a dataset already written (e.g. kept from a resumed run)."""
        stop = self.rows_done if stop is None else min(stop, self.rows_done)
        return self._file[name][start:stop]

    def create_array(self, path: str, shape: tuple[int, ...], dtype: str,
                     chunks: tuple[int, ...]) -> h5py.Dataset:
        """A dataset that is not one row per patch (e.g. a slide's stitched label map), inside
        a group (``"slide/labels"``) so the per-row checks of readers skip it; gzip-compressed
        chunks, written piece by piece by the caller before ``close``."""
        if "/" not in path.strip("/"):
            raise ValueError(f"{path}: whole-file arrays live in a group ('group/name')")
        chunks = tuple(max(1, min(c, s)) for c, s in zip(chunks, shape))
        return self._file.create_dataset(path, shape=shape, dtype=dtype, chunks=chunks,
                                         compression="gzip", compression_opts=1)

    def set_attrs(self, dataset: str, **attrs: Any) -> None:
        """Attach attributes to one dataset (e.g. CLAM-compatible ``coords`` attributes)."""
        for key, value in attrs.items():
            self._file[dataset].attrs[key] = value

    def close(self) -> Path:
        """Mark the file complete and move it to its final name."""
        f = self._file
        try:
            with self.writing():
                f.attrs["complete"] = True
                f.attrs["num_patches"] = self.rows_done
                del f.attrs["rows_committed"]
                del f.attrs["layout"]
                f.flush()  # a full disk fails here, with the file still whole to abort
                f.close()
        except BaseException as err:
            self.abort(err)
            raise
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self, error: BaseException | None = None) -> None:
        """Give up because of ``error``: remove the partial file, unless it is resumable and
        neither the error nor an earlier write was the file system's (a full disk)."""
        keep = self.resumable and not self._failed and not isinstance(error, OSError)
        if self._file.id.valid:
            if not keep:
                _discard_pending_writes(self._file)
            try:
                self._file.close()
            except Exception:  # noqa: BLE001 - h5py raises OSError or RuntimeError here
                pass  # the error that made us give up is the one to report
        if not keep:
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> ArtifactWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort(exc)
