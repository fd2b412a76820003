"""Reading artifacts: a read-only view, validated on open against the kind registry."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from histoseg_cli.core.data.format import SCHEMA_NAME, SCHEMA_VERSION, ArtifactMeta, as_str, read_meta
from histoseg_cli.core.data.kinds import KINDS
from histoseg_cli.core.errors import InputError


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
        self.meta: ArtifactMeta = read_meta(f)
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
        if as_str(attrs.get("schema", "")) != SCHEMA_NAME:
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
        name = as_str(attrs.get("kind", "patches"))
        kind = KINDS.get(name)
        if kind is None:
            raise self._fail(f"unknown artifact kind '{name}' (this histoseg reads "
                             f"{', '.join(KINDS)}): upgrade histoseg")
        problem = kind.check_link("input_path" in attrs)
        if problem:
            raise self._fail(problem)
        if kind.primary not in f or "names" not in f:
            raise self._fail(f"artifact lacks the '{kind.primary}' or 'names' dataset")
        n = f["names"].shape[0]
        expected = kind.expected_shapes(int(attrs["patch_size"]), len(attrs["class_names"]))
        for dataset in f:
            if not isinstance(f[dataset], h5py.Dataset):
                continue
            shape = f[dataset].shape
            if shape[:1] != (n,):
                raise self._fail(f"dataset '{dataset}' has {shape[0]} rows, expected {n}")
            rule = expected.get(dataset)
            if rule is not None and (len(rule) != len(shape) - 1 or any(
                    want is not None and want != got for want, got in zip(rule, shape[1:]))):
                want = (n, *("any" if r is None else r for r in rule))
                raise self._fail(f"dataset '{dataset}' has shape {shape}, expected "
                                 f"({', '.join(map(str, want))})")
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
        return [as_str(s) for s in self.file["names"][:]]

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


def recorded_provenance(path: Path) -> dict[str, Any] | None:
    """What made the artifact at ``path`` (the ``provenance`` its metadata records), or None
    when it records none or cannot be read."""
    try:
        with Artifact(path) as art:
            value = art.meta.extra.get("provenance")
    except (InputError, OSError):
        return None
    return value if isinstance(value, dict) else None
