"""The whole pipeline through the CLI on tiny synthetic data, as the README's first command
runs it: demo-data -> tile -> train-cls -> cams -> train-seg -> predict -> eval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from histoseg_cli.app import app
from histoseg_cli.core.models.checkpoint import load_model, save_checkpoint
from histoseg_cli.core.models.segmenter import build_segmenter

pytestmark = pytest.mark.usefixtures("one_torch_thread")
RUN = ["--batch-size", "8", "--workers", "0", "--device", "cpu", "-q"]


def invoke(*args: object) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def _eval(seg: Path, root: Path, name: str) -> dict:
    art = root / "art"
    invoke("predict", seg, art / "test.h5", "-o", root / f"{name}.h5", "--classifier",
           root / "cls", "--device", "cpu", "-q")
    return json.loads(invoke("eval", root / f"{name}.h5", art / "test.h5", "--json", "-q"))


@pytest.mark.slow
def test_trained_pipeline_beats_the_untrained_segmenter(tmp_path: Path):
    invoke("demo-data", tmp_path / "data", "--patch-size", "32", "--train", "48", "--val", "16",
           "--test", "16", "--seed", "2", "-q")
    invoke("tile", tmp_path / "data", "--dataset", "luad", "-o", tmp_path / "art", "-q")
    art = tmp_path / "art"
    invoke("train-cls", art / "train.h5", "-o", tmp_path / "cls", "--backbone", "resnet38d",
           "--width", "0.0625", "--epochs", "3", "--pda-warmup", "1", *RUN)
    invoke("cams", tmp_path / "cls", art / "train.h5", "-o", tmp_path / "pseudo.h5",
           "--gallery", "0", "--device", "cpu", "-q")
    seg = invoke("train-seg", art / "train.h5", tmp_path / "pseudo.h5", "-o", tmp_path / "seg",
                 "--encoder", "resnet18", "--epochs", "6", *RUN)
    trained = _eval(Path(seg), tmp_path, "trained")
    info = load_model(seg).info
    torch.manual_seed(0)
    untrained = save_checkpoint(tmp_path / "untrained.pt", build_segmenter(info), info)
    baseline = _eval(untrained, tmp_path, "untrained")
    assert set(trained) >= {"miou", "fwiou", "accuracy", "iou", "pixels"}
    assert trained["miou"] > baseline["miou"] + 0.05, (trained, baseline)
