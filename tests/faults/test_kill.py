"""kill -9 at several moments (start-up, the middle, near the final write) of every command
that writes, then rerun: no partial output is ever accepted, the rerun completes, and the
result equals an uninterrupted run bit for bit (CPU).

Each test runs the command once uninterrupted as the reference (its duration T sets the kill
moments), then a chain on a second output: killed 1 s in, rerun and killed at 0.5 T, rerun
and killed at 0.9 T, rerun to the end. After every kill the output, if it exists, must be
complete and equal the reference's.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from harness import (KILL_AT, alive, kill_after, metrics_rows, run,
                     same_arrays, timed)
from histoseg_cli.app import app

pytestmark = pytest.mark.slow


def chain(args: Callable[[], list[object]], cwd: Path, duration: float,
          check: Callable[[], None]) -> list[list[int]]:
    """Kill ``histoseg *args()`` at each moment of :data:`KILL_AT`, checking the outputs after
    each kill, then run it to the end; the child processes each kill left behind."""
    orphans = []
    for i, moment in enumerate(KILL_AT):
        orphans.append(kill_after(moment if i == 0 else moment * duration, *args(), cwd=cwd))
        check()
    done = run(*args(), cwd=cwd)
    assert done.returncode == 0, done.stderr
    check()
    return orphans


def _h5(path: Path, dataset: str) -> np.ndarray:
    with h5py.File(path) as f:
        return f[dataset][:]


# ------------------------------------------------------------------------- training
@pytest.mark.parametrize("stage", ["train-cls", "train-seg"])
def test_training_killed_resumes_exactly(pipeline: dict[str, Path], tmp_path: Path, stage: str):
    art = pipeline["art"]
    common = ["--val", art / "val.h5", "--epochs", 3, "-b", 10, "-j", 2, "-q"]
    if stage == "train-cls":
        head = ["train-cls", art / "train.h5", "--backbone", "resnet18", "--pda-warmup", 1]
    else:
        head = ["train-seg", art / "train.h5", pipeline["pm"], "--encoder", "resnet18"]
    duration = timed(*head, *common, "-o", tmp_path / "straight", cwd=tmp_path)
    killed = tmp_path / "killed"

    def args() -> list[object]:  # resume what was started, else start
        again = ["--resume"] if (killed / "config.json").is_file() else []
        return [*head, *common, "-o", killed, *again]

    def check() -> None:
        if (killed / "checkpoint.pt").is_file():  # never a torn checkpoint
            saved = torch.load(killed / "checkpoint.pt", weights_only=True)
            assert saved["info"]["epoch"] >= 1

    chain(args, tmp_path, duration, check)
    assert metrics_rows(killed) == metrics_rows(tmp_path / "straight")
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(killed / "checkpoint.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------- one artifact
#: Commands writing one artifact resumably, the arguments (from the pipeline) and the dataset
#: compared: cams' pseudo masks, predict's predictions.
ARTIFACT_COMMANDS = {
    "cams": (lambda p: ["cams", p["cls"], p["art"] / "train.h5", "--tta", "d4", "--gallery", 0],
             "pseudo_masks"),
    "predict": (lambda p: ["predict", p["seg"], p["art"] / "test.h5", "--classifier", p["cls"]],
                "predictions"),
}


@pytest.mark.parametrize("command", sorted(ARTIFACT_COMMANDS))
def test_artifact_killed_reruns_to_the_same_result(pipeline: dict[str, Path], tmp_path: Path,
                                                   command: str):
    make_args, dataset = ARTIFACT_COMMANDS[command]
    args = [*make_args(pipeline), "-q"]
    duration = timed(*args, "-o", tmp_path / "ref.h5", cwd=tmp_path)
    reference = _h5(tmp_path / "ref.h5", dataset)
    out = tmp_path / "out.h5"

    def check() -> None:
        if out.exists():
            assert same_arrays(_h5(out, dataset), reference)

    chain(lambda: [*args, "-o", out], tmp_path, duration, check)
    assert out.exists()


# ------------------------------------------------------------------------- folders
def test_predict_image_folder_killed(pipeline: dict[str, Path], tmp_path: Path):
    args = ["predict", pipeline["seg"], pipeline["data"] / "test" / "img", "--classifier",
            pipeline["cls"], "--stride", 8, "-q"]
    duration = timed(*args, "-o", tmp_path / "ref", cwd=tmp_path)
    names = sorted(p.name for p in (tmp_path / "ref").glob("*.png"))
    assert len(names) == 6
    out = tmp_path / "out"

    def check() -> None:
        for name in names:
            if (out / name).exists():
                a = np.asarray(Image.open(tmp_path / "ref" / name))
                assert same_arrays(np.asarray(Image.open(out / name)), a), name

    chain(lambda: [*args, "-o", out], tmp_path, duration, check)
    assert sorted(p.name for p in out.glob("*.png")) == names


def test_predict_slide_folder_killed_and_its_workers_end(pipeline: dict[str, Path],
                                                         tmp_path: Path):
    args = ["predict", pipeline["seg"], pipeline["slides"], "--classifier", pipeline["cls"],
            "--mpp", 1.0, "--stride", 16, "--workers", 2, "-q"]
    duration = timed(*args, "-o", tmp_path / "ref", cwd=tmp_path)
    out = tmp_path / "out"

    def check() -> None:
        for slide in ("a", "b"):
            if (out / f"{slide}.h5").exists():
                ref = _h5(tmp_path / "ref" / f"{slide}.h5", "slide/labels")
                assert same_arrays(_h5(out / f"{slide}.h5", "slide/labels"), ref)

    orphans = chain(lambda: [*args, "-o", out], tmp_path, duration, check)
    _assert_end(orphans)
    assert (out / "a.h5").exists() and (out / "b.h5").exists()
    # the cohort summary after kills and resumes equals the uninterrupted run's
    def summary(folder: Path) -> list[tuple]:
        rows = csv.DictReader(open(folder / "summary.csv"))
        return [(Path(r["slide"]).name, r["tissue_mm2"], r["NEC_fraction"]) for r in rows]

    assert summary(out) == summary(tmp_path / "ref") and len(summary(out)) == 2
    assert (out / "summary.png").is_file()


# ------------------------------------------------------------------------- tile
def test_tile_slide_folder_killed_and_its_workers_end(pipeline: dict[str, Path], tmp_path: Path):
    args = ["tile", pipeline["slides"], "--mpp", 1.0, "--patch-size", 32, "--min-tissue", 0,
            "--workers", 2, "-q"]
    duration = timed(*args, "-o", tmp_path / "ref", cwd=tmp_path)
    out = tmp_path / "out"

    def check() -> None:
        for slide in ("a", "b"):
            if (out / f"{slide}.h5").exists():
                for name in ("patches", "coords"):
                    ref = _h5(tmp_path / "ref" / f"{slide}.h5", name)
                    assert same_arrays(_h5(out / f"{slide}.h5", name), ref), (slide, name)

    orphans = chain(lambda: [*args, "-o", out], tmp_path, duration, check)
    _assert_end(orphans)
    assert (out / "a.h5").exists() and (out / "b.h5").exists()


def _assert_end(orphans: list[list[int]], within: float = 5.0) -> None:
    """Every process a killed command had started ends within ``within`` seconds."""
    pids = [pid for kill in orphans for pid in kill]
    deadline = time.monotonic() + within
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in pids if alive(pid)]


# ------------------------------------------------------------------------- export
def test_export_killed(pipeline: dict[str, Path], tmp_path: Path):
    ort = pytest.importorskip("onnxruntime")
    args = ["export", pipeline["seg"], "--classifier", pipeline["cls"], "--samples", 4, "-q"]
    duration = timed(*args, "-o", tmp_path / "ref.onnx", cwd=tmp_path)
    out = tmp_path / "out.onnx"
    patches = _h5(pipeline["art"] / "test.h5", "patches")[:4]

    def labels(path: Path) -> np.ndarray:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: patches}
        return session.run(None, feed)[0]

    reference = labels(tmp_path / "ref.onnx")

    def check() -> None:
        if out.exists():  # a file that is there is a whole, verified model
            assert same_arrays(labels(out), reference)

    chain(lambda: [*args, "-o", out], tmp_path, duration, check)
    assert out.exists()


def test_export_finds_the_training_data_from_any_directory(pipeline: dict[str, Path],
                                                           tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch):
    """A segmenter trained from a dataset folder given as a relative path: export, run from
    elsewhere, verifies on the artifact that run read (recorded absolute, with its hash).
    Both commands run in this process (no start-up to pay), each from its own directory."""
    pytest.importorskip("onnxruntime")
    cli = CliRunner()
    monkeypatch.chdir(pipeline["root"])
    trained = cli.invoke(app, ["train-seg", "D", "pm.h5", "-o", str(tmp_path / "seg"),
                               "--encoder", "resnet18", "--epochs", "1", "-b", "10", "-j", "0",
                               "-q"])
    assert trained.exit_code == 0, trained.output
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    done = cli.invoke(app, ["export", str(tmp_path / "seg"), "--classifier",
                            str(pipeline["cls"]), "-o", "m.onnx", "--samples", "4", "-q"])
    assert done.exit_code == 0, done.output
    assert (elsewhere / "m.onnx").is_file()
    recorded = torch.load(tmp_path / "seg" / "checkpoint.pt", weights_only=True)["info"]["data"]
    assert Path(recorded["train"]["path"]).is_absolute()
    assert recorded["train"]["path"] == str((tmp_path / "seg" / "data" / "train.h5").resolve())
