"""Read MXNet ``.params`` files (NDArray lists) without MXNet, and map ResNet-38 "A1" names.

The paper starts from the ImageNet "A1" weights of Wu et al., published only as an MXNet
``.params`` file. Its format (``mx.nd.save``) is little-endian::

    uint64 0x112 (list magic), uint64 0 (reserved)
    uint64 n, then n NDArrays
    uint64 m (m == n or 0), then m names as (uint64 length, UTF-8 bytes)

and each dense NDArray is: an optional uint32 magic (V1 0xF993FAC8; V2 0xF993FAC9 and V3
0xF993FACA followed by an int32 storage type), the shape (uint32 ndim then int64 dims; legacy
files without magic give ndim in the first word and uint32 dims), then unless the shape is
empty: int32 device type, int32 device id, int32 dtype flag and the raw data.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch

from histoseg_cli.core.errors import InputError

LIST_MAGIC = 0x112
V1_MAGIC = 0xF993FAC8
V2_MAGIC = 0xF993FAC9
V3_MAGIC = 0xF993FACA
DTYPES = {0: np.float32, 1: np.float64, 2: np.float16, 3: np.uint8, 4: np.int32, 5: np.int8,
          6: np.int64}


class _Reader:
    def __init__(self, data: bytes, path: Path) -> None:
        self.data = data
        self.pos = 0
        self.path = path

    def take(self, fmt: str) -> tuple[int, ...]:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise InputError(self.path, "truncated MXNet .params file")
        values = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return values

    def array(self) -> np.ndarray:
        (magic,) = self.take("<I")
        if magic in (V2_MAGIC, V3_MAGIC):
            (stype,) = self.take("<i")
            if stype not in (-1, 0):  # -1 undefined, 0 default (dense)
                raise InputError(self.path, "sparse NDArray in .params file; expected dense "
                                 "weights")
        if magic in (V1_MAGIC, V2_MAGIC, V3_MAGIC):
            (ndim,) = self.take("<i")
            shape = self.take(f"<{ndim}q") if ndim > 0 else ()
        else:  # legacy: the first word is ndim, dims are uint32
            shape = self.take(f"<{magic}I")
        if len(shape) == 0:
            return np.zeros((0,), np.float32)
        self.take("<ii")  # device type and id
        (flag,) = self.take("<i")
        if flag not in DTYPES:
            raise InputError(self.path, f"unknown NDArray dtype flag {flag}")
        dtype = np.dtype(DTYPES[flag]).newbyteorder("<")
        count = int(np.prod(shape))
        nbytes = count * dtype.itemsize
        if self.pos + nbytes > len(self.data):
            raise InputError(self.path, "truncated MXNet .params file")
        values = np.frombuffer(self.data, dtype, count, self.pos).reshape(shape)
        self.pos += nbytes
        return values.astype(dtype.newbyteorder("="))


def read_ndarray_list(path: str | Path) -> dict[str, np.ndarray]:
    """All named arrays of an MXNet ``.params`` file, names as stored (``arg:``/``aux:``)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise InputError(path, f"cannot read ({err.strerror})") from None
    reader = _Reader(data, path)
    if len(data) < 16 or reader.take("<QQ")[0] != LIST_MAGIC:
        raise InputError(path, "not an MXNet .params file (NDArray list magic 0x112 missing)")
    (count,) = reader.take("<Q")
    arrays = [reader.array() for _ in range(count)]
    (num_names,) = reader.take("<Q")
    if num_names != count:
        raise InputError(path, f"{count} arrays but {num_names} names; expected named weights")
    names = []
    for _ in range(num_names):
        (length,) = reader.take("<Q")
        reader.pos += length
        if reader.pos > len(data):
            raise InputError(path, "truncated MXNet .params file")
        names.append(data[reader.pos - length:reader.pos].decode("utf-8"))
    return dict(zip(names, arrays))


_BN_PARAMS = {"beta": "bias", "gamma": "weight", "mean": "running_mean", "var": "running_var"}


def resnet38d_name(mx_name: str) -> str | None:
    """The ResNet38d parameter name of an "A1" MXNet name; None for the ImageNet classifier.

    ``arg:res4b5_branch2a_weight`` -> ``b4_5.conv_branch2a.weight``,
    ``aux:bn2a_branch2b1_moving_var`` -> ``b2.bn_branch2b1.running_var``,
    ``arg:bn7_gamma`` -> ``bn7.weight``, ``arg:conv1a_weight`` -> ``conv1a.weight``.
    """
    name = mx_name.split(":", 1)[-1]
    toks = name.split("_")
    if toks[0] == "conv1a":
        return "conv1a.weight"
    if toks[0].startswith("linear") or toks[0].startswith("fc"):
        return None
    if toks[0] == "bn7":
        return f"bn7.{_BN_PARAMS[toks[-1]]}"
    if len(toks) < 3 or not toks[1].startswith("branch"):
        raise ValueError(f"unexpected ResNet-38 A1 parameter name '{mx_name}'")
    unit = toks[0]
    kind = "conv" if unit.startswith("res") else "bn"
    stage_unit = unit[3:] if kind == "conv" else unit[2:]  # e.g. "4b5", "2a", "6a"
    stage, block = stage_unit[0], stage_unit[1:]
    block_name = f"b{stage}" if block == "a" else f"b{stage}_{block[1:]}"
    last = "weight" if kind == "conv" else _BN_PARAMS[toks[-1]]
    return f"{block_name}.{kind}_{toks[1]}.{last}"


def load_resnet38d_params(path: str | Path) -> dict[str, torch.Tensor]:
    """A ResNet38d state dict from the MXNet "A1" ``.params`` file."""
    state = {}
    for mx_name, array in read_ndarray_list(path).items():
        try:
            name = resnet38d_name(mx_name)
        except (ValueError, KeyError):
            raise InputError(path, f"parameter '{mx_name}' is not a ResNet-38 A1 name; "
                             "expected the ilsvrc-cls_rna-a1 weights") from None
        if name is not None:
            state[name] = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    return state
