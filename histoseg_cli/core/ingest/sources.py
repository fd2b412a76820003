"""One way for every command to accept patch data: an artifact, a folder of artifacts, or a
dataset folder whose layout is detected (or named) and imported on the fly.

Imports of dataset folders go into a cache folder the caller chooses (a training run's
``RUN_DIR/data/``, a folder beside a ``cams`` output) and are reused when they came from the
same folder with the same layout, so reruns cost nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path

from histoseg_cli.core.data.datasets import Split, classify_split, detect_dataset, find_splits
from histoseg_cli.core.data.layouts import DatasetSpec, get_dataset
from histoseg_cli.core.data.format import ARTIFACT_SUFFIXES
from histoseg_cli.core.data.inputs import DataSources
from histoseg_cli.core.data.reader import Artifact
from histoseg_cli.core.errors import InputError, UsageError
from histoseg_cli.core.ingest.patches import TileConfig, tile_split
from histoseg_cli.core.progress import SILENT, Reporter

log = logging.getLogger("histoseg")



def _artifacts_in(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir())
            if p.suffix.lower() in ARTIFACT_SUFFIXES and not p.name.startswith(".")}


def _layout(folder: Path, dataset: str | None) -> DatasetSpec:
    if dataset is not None:
        return get_dataset(dataset)
    spec = detect_dataset(folder)
    log.info("%s: detected the %s layout (labels like %s)", folder, spec.name,
             spec.label_example)
    return spec


def import_split(split: Split, spec: DatasetSpec, out: Path, workers: int = 4,
                 reporter: Reporter = SILENT) -> Path:
    """``split`` as the artifact ``out``, reusing ``out`` when it was imported from the same
    folder with the same layout."""
    if out.is_file():
        try:
            with Artifact(out) as done:
                meta = done.meta
            origin = split.images if split.is_labelled else split.images.parent
            if (Path(meta.source).resolve() == origin.resolve()
                    and meta.extra.get("dataset") == spec.name):
                log.info("reusing imported %s", out)
                return out
            log.info("re-importing %s (it came from %s)", out, meta.source)
        except InputError:
            log.info("re-importing %s (incomplete or invalid)", out)
    tile_split(split, out, spec, TileConfig(patch_size=None, workers=workers), reporter)
    return out


def _check_exists(path: Path, role: str) -> None:
    if not path.exists():
        raise InputError(path, f"no such file or folder (expected {role}: a patches artifact "
                         ".h5 or a dataset folder)")


def resolve_sources(data: str | Path, val: str | Path | None, dataset: str | None,
                    cache: Path, workers: int = 4, reporter: Reporter = SILENT) -> DataSources:
    """Training (and validation) artifacts for DATA and ``--val``.

    DATA may be an artifact, a folder of artifacts (``train.h5`` and ``val.h5``), or a dataset
    folder (layout from ``dataset`` or detected) imported into ``cache``. A dataset root or an
    artifact folder holding a validation split also yields the validation artifact unless
    ``val`` is given.
    """
    data_path = Path(data)
    _check_exists(data_path, "training data")
    if val is not None:
        _check_exists(Path(val), "validation data")
    auto_val: Path | None = None
    spec: DatasetSpec | None = get_dataset(dataset) if dataset else None
    if data_path.is_dir() and _artifacts_in(data_path) and dataset is None:
        found = _artifacts_in(data_path)
        train = found.get("train") or (next(iter(found.values())) if len(found) == 1 else None)
        if train is None:
            raise InputError(data_path, f"holds artifacts {', '.join(found)} but no train.h5; "
                             "pass the training artifact itself")
        log.info("%s: a folder of artifacts (training on %s)", data_path, train.name)
        auto_val = found.get("val") if train.stem != "val" else None
    elif data_path.is_dir():
        spec = _layout(data_path, dataset)
        splits = find_splits(data_path, spec)
        by_name = {s.name: s for s in splits}
        train_split = splits[0] if len(splits) == 1 else by_name.get("train")
        if train_split is None:
            raise InputError(data_path, f"no training split found (expected one of "
                             f"{', '.join(spec.train_dirs)})")
        train = import_split(train_split, spec, cache / "train.h5", workers, reporter)
        if len(splits) > 1 and "val" in by_name and val is None:
            auto_val = import_split(by_name["val"], spec, cache / "val.h5", workers, reporter)
    else:
        train = data_path
    if auto_val is not None and val is None:
        log.info("validating on %s (the data's val split)", auto_val)
    val_path = auto_val if val is None else resolve_patch_input(
        val, spec.name if spec else dataset, cache, workers, reporter, stem=f"val-{Path(val).name}")
    return DataSources(train, val_path, spec.background if spec else None)


def resolve_patch_input(path: str | Path, dataset: str | None, cache: Path, workers: int = 4,
                        reporter: Reporter = SILENT, stem: str | None = None) -> Path:
    """One patches artifact for PATH: the file itself, ``train.h5`` of a folder of artifacts,
    or the training split (else the only split) of a dataset folder imported into ``cache``."""
    path = Path(path)
    _check_exists(path, "patch data")
    if not path.is_dir():
        return path
    found = _artifacts_in(path)
    if found and dataset is None:
        if "train" in found or len(found) == 1:
            return found.get("train") or next(iter(found.values()))
        raise InputError(path, f"holds several artifacts ({', '.join(found)}) and no train.h5; "
                         "pass one of them")
    own = classify_split(path)
    if dataset is None and own is not None and not own.is_labelled:
        raise UsageError(f"{path}: images with masks carry no label style to detect a "
                         "layout from; name it with {dataset}")
    spec = _layout(path, dataset)
    splits = find_splits(path, spec)
    split = next((s for s in splits if s.name == "train"), splits[0])
    name = stem or ("train" if split.name == "train" else split.name)
    return import_split(split, spec, cache / f"{name}.h5", workers, reporter)

