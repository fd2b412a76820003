"""Patch-level labels carried in file names.

LUAD-HistoSeg writes ``1031280-2300-27920-[1 0 0 1].png``, BCSS-WSSS ``name+12[1001].png`` and
WSSS4LUAD ``id-[1, 0, 0].png``: the flags in the last bracket are the multi-hot label.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from histoseg_cli.core.errors import InputError

_BRACKET = re.compile(r"\[([^\[\]]*)\](?=[^\[\]]*$)")


def parse_label(path: str | Path, num_classes: int) -> np.ndarray:
    """The multi-hot label (uint8, ``num_classes`` long) in ``path``'s file name.

    Accepts ``[1 0 0 1]``, ``[1001]`` and ``[1, 0, 0, 1]``; anything else (no bracket, other
    characters, wrong length, no class set) raises an ``InputError`` naming the file.
    """
    name = Path(path).stem
    match = _BRACKET.search(name)
    if match is None:
        raise InputError(path, f"file name carries no label; expected a name ending in "
                         f"'[{' '.join(['0'] * num_classes)}]' with {num_classes} 0/1 flags")
    body = match.group(1).strip()
    if re.fullmatch(r"[01]+", body):
        flags = list(body)
    elif re.fullmatch(r"[01](\s*,\s*[01]|\s+[01])*", body):
        flags = re.split(r"[\s,]+", body)
    else:
        raise InputError(path, f"label '[{body}]' is not a list of 0/1 flags")
    if len(flags) != num_classes:
        raise InputError(path, f"label '[{body}]' has {len(flags)} flags, expected "
                         f"{num_classes} (one per class)")
    label = np.array([int(f) for f in flags], dtype=np.uint8)
    if not label.any():
        raise InputError(path, f"label '[{body}]' sets no class")
    return label


def strip_label(path: str | Path) -> str:
    """The file stem without its label bracket (a stable patch name)."""
    name = Path(path).stem
    return _BRACKET.sub("", name).rstrip("-_+ ") or name


def labels_from_masks(masks: np.ndarray, num_classes: int, min_fraction: float) -> np.ndarray:
    """Multi-hot labels (B, C) from masks (B, H, W): class k present if its pixel fraction of
    the patch exceeds ``min_fraction``; values >= ``num_classes`` are background."""
    b = masks.shape[0]
    area = masks.shape[1] * masks.shape[2]
    k = num_classes + 1
    flat = np.minimum(masks.reshape(b, -1), num_classes).astype(np.int64)
    flat += np.arange(b, dtype=np.int64)[:, None] * k
    counts = np.bincount(flat.ravel(), minlength=b * k).reshape(b, k)
    return (counts[:, :num_classes] / area > min_fraction).astype(np.uint8)
