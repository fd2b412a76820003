"""``predict --shard K/N``: one of N independent jobs over the same folder, as a scheduler's
array job runs them (Slurm: ``--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT``).

Shard K takes inputs K, K+N, K+2N, ... of the folder (as torchrun ranks do) and writes its
own manifest, ``manifest.shard-K-of-N.csv``. Every shard, when it ends, merges the shard
manifests it finds into ``manifest.csv`` (inputs no shard has reported yet are "pending"),
each file replaced atomically: merging is idempotent, shards may end in any order or at
once, and after the last one the output folder holds the whole cohort's tables. Shard
manifests made by another model or other settings are refused, naming both.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from histoseg_cli.core.errors import HistosegError, UsageError
from histoseg_cli.core.folder_run import rank_share

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based, like ranks)."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``K/N`` with 0 <= K < N (a usage error otherwise)."""
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if match is None:
            raise UsageError(f"'{text}': expected K/N, e.g. 0/4 (K from 0 to N-1)", "shard")
        index, count = int(match.group(1)), int(match.group(2))
        if count < 1 or not 0 <= index < count:
            raise UsageError(f"'{text}': K must be from 0 to N-1 (here 0 to {count - 1})",
                             "shard")
        return cls(index, count)

    def take(self, items: Sequence[T]) -> list[T]:
        """This shard's part of ``items``: split the way torchrun ranks split them."""
        return rank_share(items, self.index, self.count)

    @property
    def manifest_name(self) -> str:
        return f"manifest.shard-{self.index}-of-{self.count}.csv"

    def manifests(self, folder: Path) -> list[Path]:
        """The shard manifests of this sharding (N) found in ``folder``."""
        return sorted(folder.glob(f"manifest.shard-*-of-{self.count}.csv"))


def read_shard_rows(paths: list[Path], made_by: str = "", own: Path | None = None
                    ) -> dict[str, dict[str, str]]:
    """Every row of the shard manifests by input. Refused when they were made differently
    (their ``made_by`` columns differ, or differ from ``made_by``, what this shard makes and
    records in ``own``), naming two manifests that disagree."""
    rows: dict[str, dict[str, str]] = {}
    made: dict[str, str] = {made_by: f"this run (-> {own})" if own else "this run"} \
        if made_by else {}
    for path in paths:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                key = row.get("made_by", "")
                if key:
                    made.setdefault(key, str(path))
                rows[row["input"]] = row
    if len(made) > 1:
        (a, first), (b, second) = list(made.items())[:2]
        raise HistosegError(f"{first} and {second} were made by different models or settings "
                            f"({a} vs {b}); rerun the shards with the same ones, or write "
                            "them to different {output} folders")
    return rows
