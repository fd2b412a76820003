"""train-seg on tiny synthetic data: the loss, a real short run, resume, gate head, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from histoseg_cli.app import app
from histoseg_cli.core.data.demo import DemoConfig, write_demo_dataset
from histoseg_cli.core.data.reader import Artifact
from histoseg_cli.core.inference.engine import InferenceEngine
from histoseg_cli.core.metrics.confusion import ConfusionMatrix
from histoseg_cli.core.models import InputNorm, Segmenter, load_segmenter
from histoseg_cli.core.training import run_dir as run_dir_module
from histoseg_cli.core.training.config import ClassifierConfig
from histoseg_cli.core.training.segmenter import (
    SegmenterConfig,
    SegmenterTask,
    pseudo_supervision_loss,
)
from tests.conftest import write_patches

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SEG = ["--encoder", "resnet18", "--batch-size", "8", "--workers", "0", "--device", "cpu",
       "-q"]


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_decoder_lr_is_10x_the_encoders_unless_set():
    def head_lr(**options: object) -> set[float]:  # the decoder's and heads' LR
        cfg = SegmenterConfig(data="d.h5", run_dir="r", pseudo="p.h5", **options)
        task = SegmenterTask(cfg)
        groups = task.parameter_groups(Segmenter("resnet18", 2))
        return {round(g["lr"], 9) for g in groups if g["name"].startswith("head")}

    assert head_lr() == {0.1}
    assert head_lr(head_lr_mult=3.0) == {0.03}
    assert head_lr(pretrained="w.pth", lr=0.001, head_lr_mult=1.0) == {0.001}


def test_pretrained_weights_lower_the_default_lr_of_the_classifier_only():
    """0.01 wipes out an ImageNet classifier; a segmenter's encoder under a fresh decoder
    needs it."""
    def lr(config: type, **options: object) -> float:
        extra = {"pseudo": "p.h5"} if config is SegmenterConfig else {}
        return config(data="d.h5", run_dir="r", **extra, **options).lr

    assert lr(ClassifierConfig) == lr(SegmenterConfig) == 0.01
    assert lr(ClassifierConfig, pretrained="imagenet") == 0.001
    assert lr(SegmenterConfig, pretrained="imagenet") == 0.01
    assert lr(ClassifierConfig, pretrained="imagenet", lr=0.005) == 0.005


def test_loss_weights_layers_and_ignores_background():
    logits = torch.tensor([[[[2.0, 0.0, 1.0]], [[0.0, 1.0, 1.0]]]])  # (1, C=2, 1, 3)
    targets = torch.tensor([[[[0, 1, 2]], [[1, 2, 2]]]], dtype=torch.uint8)  # 2 layers, 2 = bg
    loss = pseudo_supervision_loss(logits, targets, [0.25, 0.75], ignore_index=2)
    log_p = F.log_softmax(logits, dim=1)[0, :, 0]  # (C, 3)
    layer0 = -(log_p[0, 0] + log_p[1, 1]) / 2  # two labelled pixels
    layer1 = -log_p[1, 0]  # one labelled pixel
    torch.testing.assert_close(loss, 0.25 * layer0 + 0.75 * layer1)
    empty = torch.full_like(targets, 2)
    zero = pseudo_supervision_loss(logits.requires_grad_(), empty, [0.2, 0.8], ignore_index=2)
    assert zero.item() == 0 and torch.isfinite(zero)
    zero.backward()
    assert torch.all(logits.grad == 0)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Demo data -> artifacts -> a small classifier -> pseudo masks."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("seg")
    write_demo_dataset(root / "data", DemoConfig(patch_size=32, train=48, val=16, test=1,
                                                 seed=2))
    assert invoke("tile", root / "data", "--dataset", "luad", "-o", root / "art",
                  "-q").exit_code == 0
    cls = invoke("train-cls", root / "art" / "train.h5", "-o", root / "cls", "--backbone",
                 "resnet38d", "--width", "0.0625", "--epochs", "3", "--pda-warmup", "1",
                 "--batch-size", "8", "--workers", "0", "--device", "cpu", "-q")
    assert cls.exit_code == 0, cls.output
    cams = invoke("cams", root / "cls", root / "art" / "train.h5", "-o", root / "pseudo.h5",
                  "--gallery", "0", "--device", "cpu", "-q")
    assert cams.exit_code == 0, cams.output
    torch.set_num_threads(saved)
    return {"root": root, "train": root / "art" / "train.h5", "val": root / "art" / "val.h5",
            "pseudo": root / "pseudo.h5", "cls": root / "cls"}


def _untrained_miou(val: Path) -> float:
    torch.manual_seed(0)
    model = Segmenter("resnet18", 4, 16)
    engine = InferenceEngine.for_model(model, InputNorm.from_spec("imagenet"),
                                       torch.device("cpu"), "fp32")
    with Artifact(val) as art:
        matrix = ConfusionMatrix(art.class_names)
        out = engine(art.dataset("patches")[:])
        matrix.update(out["masks"].argmax(1).numpy(), art.dataset("masks")[:])
    return matrix.scores().miou


@pytest.mark.slow
def test_short_run_beats_the_untrained_model(pipeline: dict[str, Path]):
    run = pipeline["root"] / "seg"
    result = invoke("train-seg", pipeline["train"], pipeline["pseudo"], "--val",
                    pipeline["val"], "-o", run, "--epochs", "14", "--json",
                    *SEG)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["checkpoint"] == str(run / "checkpoint.pt") and payload["best"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, 15))
    best = max(r["val"]["miou"] for r in rows)
    assert best > _untrained_miou(pipeline["val"]) + 0.05
    for name in ("best.pt", "curve.png", "samples/epoch_014.png", "config.json"):
        assert (run / name).is_file(), name
    loaded = load_segmenter(run)
    info = loaded.info
    assert info.task == "segmenter" and info.class_names == ["TE", "NEC", "LYM", "TAS"]
    assert info.encoder == "resnet18" and info.output_stride == 16
    assert info.atrous_rates == [6, 12, 18] and info.patch_size == 32
    assert info.supervision["layers"] == ["b4_5", "b5_2", "bn7"]
    assert info.supervision["lambdas"] == [0.2, 0.2, 0.6]
    assert info.normalisation == "imagenet" and len(info.palette) == 5


@pytest.mark.slow
def test_resume_continues_exactly(pipeline: dict[str, Path], tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch):
    args = [pipeline["train"], pipeline["pseudo"], "--val", pipeline["val"], "--epochs", "3",
            "--layers", "bn7", *SEG]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert invoke("train-seg", *args, "-o", straight).exit_code == 0
    original = run_dir_module.RunDir.write_curve

    def stop_after_one(self, rows):
        original(self, rows)
        if len(rows) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(run_dir_module.RunDir, "write_curve", stop_after_one)
    assert invoke("train-seg", *args, "-o", stopped).exit_code == 130
    monkeypatch.setattr(run_dir_module.RunDir, "write_curve", original)
    resumed = invoke("train-seg", *args, "-o", stopped, "--resume")
    assert resumed.exit_code == 0, resumed.output

    def rows(run: Path) -> list[dict]:
        return [{k: v for k, v in json.loads(line).items() if k not in ("seconds",
                                                                          "images_per_s")}
                for line in (run / "metrics.jsonl").read_text().splitlines()]

    assert rows(stopped) == rows(straight)
    a = load_segmenter(straight / "checkpoint.pt").model.state_dict()
    b = load_segmenter(stopped / "checkpoint.pt").model.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    assert load_segmenter(straight).info.supervision["lambdas"] == [1.0]


@pytest.mark.slow
def test_gate_head_and_fully_supervised_mode(pipeline: dict[str, Path], tmp_path: Path):
    result = invoke("train-seg", pipeline["train"], pipeline["pseudo"], "--val",
                    pipeline["val"], "-o", tmp_path / "gate", "--epochs", "2", "--gate-head",
                    "--classifier", pipeline["cls"], *SEG)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "gate" / "metrics.jsonl").read_text()
            .splitlines()]
    for key in ("gate_head", "classifier"):
        assert set(rows[-1]["val"][key]["f1"]) == {"TE", "NEC", "LYM", "TAS"}
    loaded = load_segmenter(tmp_path / "gate")
    assert loaded.info.gate_head
    out = loaded.model(torch.rand(2, 3, 32, 32))
    assert out["gate"].shape == (2, 4) and out["masks"].shape == (2, 4, 32, 32)
    # fully supervised on an artifact with ground-truth masks (the val split here)
    full = invoke("train-seg", pipeline["val"], "--masks", "-o", tmp_path / "full",
                  "--epochs", "1", *SEG)
    assert full.exit_code == 0, full.output
    assert load_segmenter(tmp_path / "full").info.supervision == {"masks": "ground truth"}


def test_bad_inputs_are_one_line_errors(pipeline: dict[str, Path], tmp_path: Path):
    other = write_patches(tmp_path / "other.h5", n=8, size=32)
    odd = write_patches(tmp_path / "odd.h5", n=8, size=40)
    names = write_patches(tmp_path / "names.h5", n=16, size=32, num_classes=4, masks=True)
    cases = [
        ([pipeline["train"], pipeline["val"]], "expected 'pseudo-masks'", 1),
        ([other, pipeline["pseudo"]], "does not match pseudo.h5", 1),
        ([pipeline["train"], pipeline["pseudo"], "--layers", "fc9"],
         "has no pseudo masks of layer fc9", 1),
        ([pipeline["train"], "--masks"], "has no 'masks' dataset", 1),
        ([pipeline["train"], pipeline["pseudo"], "--val", names], "differ from the training", 1),
        ([odd, "--masks"], "not divisible by the encoder's output stride 16", 1),
        ([pipeline["train"], pipeline["pseudo"], "--lambdas", "0.5,0.5"], "--lambdas", 2),
        ([pipeline["train"], pipeline["pseudo"], "--masks"], "not both", 2),
    ]
    for args, message, code in cases:
        result = invoke("train-seg", *args, "-o", tmp_path / "bad", *SEG)
        text = " ".join(result.stderr.split())
        assert result.exit_code == code, (args, result.output)
        assert message in text and "Traceback" not in text, (args, text)
        assert not (tmp_path / "bad").exists()
