"""Sets of label maps to score: an artifact's predictions or masks, a folder of such
artifacts, or a folder of label PNGs.

Either side of ``eval`` is a :class:`LabelSet`: label maps keyed by name (an artifact's patch
names, ``SUB/FILE/PATCH`` in a folder of artifacts, a folder's file stems) plus the class
names when the source records them. Reading is lazy, one map at a time, so a folder of large
images is scored in bounded memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histoseg_cli.core.data.format import ARTIFACT_SUFFIXES
from histoseg_cli.core.data.reader import Artifact
from histoseg_cli.core.errors import InputError
from histoseg_cli.core.folder_run import files_under
from histoseg_cli.core.imageio import read_label_classes, read_mask

LABEL_SUFFIXES = (".png", ".tif", ".tiff", ".bmp")
#: Datasets an artifact's label maps are read from, in order of preference.
ARTIFACT_LABELS = ("predictions", "masks")


@dataclass
class LabelSet:
    """Named label maps from one source."""

    path: Path
    names: list[str]
    read: Callable[[str], np.ndarray]
    class_names: list[str] | None
    describe: Callable[[str], str]  # where one map comes from, for messages
    artifact: Artifact | None = None  # the one artifact the maps are read from, if any

    def __len__(self) -> int:
        return len(self.names)


def _artifact_set(path: Path, prefer: tuple[str, ...]) -> LabelSet:
    artifact = Artifact(path)
    dataset = next((d for d in prefer if d in artifact.datasets), None)
    if dataset is None:
        raise InputError(path, f"a {artifact.kind} artifact without {' or '.join(prefer)}; "
                         "expected predictions (from histoseg predict) or ground-truth masks")
    names = artifact.names()
    index = {n: i for i, n in enumerate(names)}
    if len(index) != len(names):
        raise InputError(path, "has repeated patch names; cannot match them to another set")
    data = artifact.dataset(dataset)
    return LabelSet(path, names, lambda name: data[index[name]], artifact.class_names or None,
                    lambda name: f"{path}[{name}]", artifact)


def _folder_set(path: Path) -> LabelSet:
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in LABEL_SUFFIXES
                   and p.is_file() and not p.name.startswith("."))
    if not files:
        raise InputError(path, f"holds no label images ({'/'.join(LABEL_SUFFIXES)})")
    by_stem: dict[str, Path] = {}
    for f in files:
        if f.stem in by_stem:
            raise InputError(f, f"has the same stem as {by_stem[f.stem].name}; label images "
                             "are matched by stem")
        by_stem[f.stem] = f
    classes = read_label_classes(files[0])
    return LabelSet(path, list(by_stem), lambda name: read_mask(by_stem[name]), classes,
                    lambda name: str(by_stem[name]))


class _OneOpen:
    """Artifacts of a folder opened one at a time: maps are read in ground-truth order, which
    is one artifact after another, and a cohort's thousands of files must not all hold a
    handle at once."""

    def __init__(self, prefer: tuple[str, ...]) -> None:
        self.prefer = prefer
        self.current: LabelSet | None = None

    def __call__(self, path: Path) -> LabelSet:
        if self.current is None or self.current.path != path:
            if self.current is not None and self.current.artifact is not None:
                self.current.artifact.close()
            self.current = _artifact_set(path, self.prefer)
        return self.current


def _artifact_folder_set(path: Path, files: list[Path], prefer: tuple[str, ...]) -> LabelSet:
    """The label maps of every artifact under ``path`` (predict's output for a folder of
    artifacts, or the patches artifacts it read), named ``SUB/FILE/PATCH`` by the file's path
    under ``path`` without its suffix, so two such folders pair by relative path."""
    where: dict[str, tuple[Path, str]] = {}
    classes: list[str] | None = None
    first: Path | None = None
    for file in files:
        one = _artifact_set(file, prefer)
        if one.artifact is not None:
            one.artifact.close()
        if one.class_names and classes and one.class_names != classes:
            raise InputError(file, f"classes {one.class_names} differ from {classes} of "
                             f"{first}; expected one set of classes in the folder")
        if one.class_names and not classes:
            classes, first = one.class_names, file
        stem = file.relative_to(path).with_suffix("").as_posix()
        where.update({f"{stem}/{name}": (file, name) for name in one.names})
    opened = _OneOpen(prefer)
    return LabelSet(path, list(where), lambda name: opened(where[name][0]).read(where[name][1]),
                    classes, lambda name: f"{where[name][0]}[{where[name][1]}]")


def open_label_set(path: Path, prefer: tuple[str, ...] = ARTIFACT_LABELS) -> LabelSet:
    """The label maps at ``path``: an artifact (.h5), a folder of artifacts (any ``.h5``
    under it, as ``predict`` reads and writes them), or a folder of label PNGs."""
    if not path.exists():
        raise InputError(path, "no such file or folder (expected a predictions or patches "
                         "artifact, a folder of them, or a folder of label PNGs)")
    if path.is_dir():
        artifacts = files_under(path, ARTIFACT_SUFFIXES)
        if artifacts:
            return _artifact_folder_set(path, artifacts, prefer)
        return _folder_set(path)
    return _artifact_set(path, prefer)


def match(pred: LabelSet, truth: LabelSet, only_predicted: bool = False,
          shown: int = 3) -> list[str]:
    """The names both sets hold, in ground-truth order; a clear error when either side has
    maps the other lacks (ground truth without a prediction is left out with
    ``only_predicted``, for scoring a subset against a whole mask folder)."""
    p, t = set(pred.names), set(truth.names)
    if t - p and not (only_predicted and p & t):
        first = ", ".join(sorted(t - p)[:shown])
        hint = "" if only_predicted else "; {only_predicted} scores only the predicted ones"
        raise InputError(pred.path, f"no prediction for {len(t - p)} of the {len(t)} "
                         f"ground-truth maps in {truth.path} (first: {first}){hint}")
    if p - t:
        first = ", ".join(sorted(p - t)[:shown])
        raise InputError(truth.path, f"no ground truth for {len(p - t)} of the {len(p)} "
                         f"predictions in {pred.path} (first: {first})")
    return [name for name in truth.names if name in p]


def resolve_classes(pred: LabelSet, truth: LabelSet, given: list[str] | None) -> list[str]:
    """The class names: given, else recorded by the sets (which must agree)."""
    if pred.class_names and truth.class_names and pred.class_names != truth.class_names:
        raise InputError(pred.path, f"classes {pred.class_names} differ from the ground "
                         f"truth's {truth.class_names} ({truth.path})")
    recorded = pred.class_names or truth.class_names
    if given and recorded and len(given) != len(recorded):
        raise InputError(pred.path if pred.class_names else truth.path,
                         f"records {len(recorded)} classes {recorded}; {{classes}} gives "
                         f"{len(given)}")
    names = given or recorded
    if not names:
        raise InputError(truth.path, "neither side records class names; pass {classes} "
                         "(names in label order)")
    return list(names)
