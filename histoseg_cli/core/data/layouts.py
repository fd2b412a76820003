"""Registry of the patch-dataset layouts histoseg reads (no heavy imports: help texts list it).

A layout says what the class names and colours are and where the splits live: a training
folder whose file names carry labels, and ``img/`` + ``mask/`` folders for pixel-labelled
splits. New layouts are added with :func:`register_dataset`, not with if-chains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from histoseg_cli.core.errors import UsageError

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset layout: classes in label order, mask colours, split folder names."""

    name: str
    description: str
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]  # one row per class, then background
    train_dirs: tuple[str, ...] = ("train", "training")
    mask_splits: tuple[str, ...] = ("val", "test")
    background: str = "white"  # CAM background rule: "white" (grey > 200) or "none"
    label_pattern: str = ""  # regex the bracketed label of a training file name matches
    label_example: str = ""  # e.g. "[1 0 0 1]", for messages

    def palette_array(self) -> np.ndarray:
        import numpy as np

        return np.array(self.palette, dtype=np.uint8)


DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    DATASETS[spec.name] = spec
    return spec


def get_dataset(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise UsageError(f"unknown dataset layout '{name}'; choose one of "
                         f"{', '.join(sorted(DATASETS))}") from None


register_dataset(DatasetSpec(
    name="luad",
    description="LUAD-HistoSeg: lung adenocarcinoma, 10x, labels like [1 0 0 1]",
    class_names=("TE", "NEC", "LYM", "TAS"),
    palette=((205, 51, 51), (0, 255, 0), (65, 105, 225), (255, 165, 0), (255, 255, 255)),
    background="white",
    label_pattern=r"\[[01]( [01]){3}\]",
    label_example="[1 0 0 1]",
))
register_dataset(DatasetSpec(
    name="bcss",
    description="BCSS-WSSS: breast cancer, labels like [1001]",
    class_names=("TUM", "STR", "LYM", "NEC"),
    palette=((255, 0, 0), (0, 255, 0), (0, 0, 255), (153, 0, 255), (255, 255, 255)),
    background="none",
    label_pattern=r"\[[01]{4}\]",
    label_example="[1001]",
))
