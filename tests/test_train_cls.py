"""train-cls end to end on tiny synthetic data: CLI, run directory, resume, torchrun, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from histoseg_cli.app import app
from histoseg_cli.core.data.format import ArtifactMeta
from histoseg_cli.core.data.reader import Artifact
from histoseg_cli.core.data.writer import ArtifactWriter
from histoseg_cli.core.data.demo import DemoConfig, write_demo_dataset
from histoseg_cli.core.models import load_classifier
from histoseg_cli.core.training import run_dir as run_dir_module

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = ["--backbone", "resnet38d", "--width", "0.0625", "--batch-size", "8", "--workers", "0",
        "--device", "cpu", "--pda-warmup", "1", "--pda-sigma", "0.9", "-q"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "luad"
    write_demo_dataset(root, DemoConfig(patch_size=32, train=32, val=12, test=1, seed=1))
    return root


@pytest.fixture(scope="module")
def imported(demo: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A run trained from the dataset folder (imports data/), reused by later tests."""
    run = tmp_path_factory.mktemp("runs") / "first"
    result = invoke(str(demo), "--dataset", "luad", "-o", str(run), "--epochs", "4", "--json",
                    "--lr", "0.02", *TINY)
    assert result.exit_code == 0, result.output
    return {"run": run, "train": run / "data" / "train.h5", "val": run / "data" / "val.h5",
            "payload": json.loads(result.stdout)}


def invoke(*args: str):
    return CliRunner().invoke(app, ["train-cls", *args])


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_training_from_dataset_folder(imported: dict[str, Path]) -> None:
    run = imported["run"]
    payload = imported["payload"]
    assert payload["checkpoint"] == str(run / "checkpoint.pt")
    for name in ("checkpoint.pt", "best.pt", "metrics.jsonl", "curve.png", "config.json",
                 "data/train.h5", "data/val.h5"):
        assert (run / name).is_file(), name
    rows = metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]  # it learns
    assert [r["mu"] for r in rows] == pytest.approx([1.0, 0.9, 0.81, 0.729])
    lrs = [r["lr"] for r in rows]
    steps = 32 // 8
    assert lrs == pytest.approx([0.02 * (1 - e * steps / (4 * steps)) ** 0.9 for e in range(4)])
    val = rows[-1]["val"]  # the dataset's val/ split was used automatically
    assert set(val["f1"]) == set(val["auc"]) == {"TE", "NEC", "LYM", "TAS"}
    assert 0 <= val["exact_match"] <= 1 and val["mean_auc"] is not None

    loaded = load_classifier(run / "checkpoint.pt")
    info = loaded.info
    assert info.class_names == ["TE", "NEC", "LYM", "TAS"]
    assert info.backbone == "resnet38d"
    assert info.backbone_kwargs == {"width": 0.0625, "output_stride": 8}
    assert info.cam_layers == ["b4_5", "b5_2", "bn7"]
    assert info.normalisation == "scale01" and info.patch_size == 32
    assert info.background == "white" and info.epoch == 4 and info.iteration == 4 * steps
    assert info.pda["mu"] == pytest.approx(0.729) and info.pda["sigma"] == 0.9
    assert info.config["lr"] == 0.02
    assert not loaded.model.training
    assert loaded.model(torch.rand(2, 3, 32, 32)).shape == (2, 4)


@pytest.mark.slow
def test_resume_continues_schedules_exactly(imported: dict[str, Path], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Stop after epoch 2 of 4, resume: same LR, mu, losses and weights as the straight run."""
    args = [str(imported["train"]), "--val", str(imported["val"]), "--epochs", "4",
            "--lr", "0.02", *TINY]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert invoke(*args, "-o", str(straight)).exit_code == 0

    original = run_dir_module.RunDir.write_curve

    def stop_after_two(self, rows):  # an interruption right after epoch 2 was saved
        original(self, rows)
        if len(rows) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(run_dir_module.RunDir, "write_curve", stop_after_two)
    assert invoke(*args, "-o", str(stopped)).exit_code == 130
    monkeypatch.setattr(run_dir_module.RunDir, "write_curve", original)
    assert [r["epoch"] for r in metrics(stopped)] == [1, 2]

    # resume takes the schedule from the checkpoint even if options differ
    result = invoke(str(imported["train"]), "--val", str(imported["val"]), "-o", str(stopped),
                    "--resume", "--epochs", "9", *TINY)
    assert result.exit_code == 0, result.output
    a, b = metrics(straight), metrics(stopped)
    keys = ("epoch", "iteration", "lr", "mu", "train_loss")
    assert [[r[k] for k in keys] for r in b] == [[r[k] for k in keys] for r in a]
    assert b[-1]["val"] == a[-1]["val"]
    wa = torch.load(straight / "checkpoint.pt", weights_only=True)["model"]
    wb = torch.load(stopped / "checkpoint.pt", weights_only=True)["model"]
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-5, atol=1e-6, msg=key)

    again = invoke(str(imported["train"]), "-o", str(stopped), "--resume", *TINY)
    assert again.exit_code == 0  # already complete: nothing more to do
    assert len(metrics(stopped)) == 4


@pytest.mark.slow
def test_resnet18_no_pda_fp32_nchw(imported: dict[str, Path], tmp_path: Path) -> None:
    result = invoke(str(imported["train"]), "-o", str(tmp_path / "r18"), "--backbone", "resnet18",
                    "--epochs", "1", "-b", "12", "--no-pda", "--no-channels-last",
                    "--color-jitter", "0.2", "--workers", "1", "--device", "cpu", "-q")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(tmp_path / "r18" / "checkpoint.pt")
    loaded = load_classifier(tmp_path / "r18")
    assert loaded.info.cam_layers == ["layer2", "layer3", "layer4"]
    assert loaded.info.normalisation["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert not (tmp_path / "r18" / "best.pt").exists()  # no validation set given


def test_output_stride_is_chosen_recorded_and_checked(imported: dict[str, Path],
                                                     tmp_path: Path) -> None:
    """--output-stride 16 builds, trains and reloads at 16 (recorded in the checkpoint, so cams
    rebuilds the same network); a run without it records its backbone's default."""
    result = invoke(str(imported["train"]), "-o", str(tmp_path / "os16"), "--backbone",
                    "resnet18", "--output-stride", "16", "--epochs", "1", "-b", "16",
                    "--workers", "0", "--device", "cpu", "-q")
    assert result.exit_code == 0, result.output
    loaded = load_classifier(tmp_path / "os16")
    assert loaded.info.backbone_kwargs == {"output_stride": 16}
    assert loaded.model.backbone.output_stride == 16
    layers = loaded.model.backbone(torch.rand(1, 3, 32, 32))
    assert [v.shape[-1] for v in layers.values()] == [4, 2, 2]
    assert load_classifier(imported["run"]).info.backbone_kwargs == {"width": 0.0625,
                                                                     "output_stride": 8}
    for args, needle in ((["--output-stride", "12"], "resnet38d has output stride 8 only, not 12"),
                         (["--output-stride", "16", *TINY], "output stride 8 only")):
        bad = invoke(str(imported["train"]), "-o", str(tmp_path / "bad"), *args)
        assert bad.exit_code == 2 and needle in bad.stderr, bad.stderr
        assert not (tmp_path / "bad").exists()


def test_input_scale_is_trained_recorded_and_seen_by_cams(imported: dict[str, Path],
                                                          tmp_path: Path) -> None:
    """--input-scale 2: the network resizes each patch itself, so the reloaded checkpoint
    (cams, the gate) sees what training saw; a value out of range is a usage error."""
    run = tmp_path / "x2"
    result = invoke(str(imported["train"]), "-o", str(run), "--input-scale", "2", "--epochs",
                    "1", *TINY)
    assert result.exit_code == 0, result.output
    loaded = load_classifier(run)
    assert loaded.info.input_scale == 2.0 and loaded.model.input_scale == 2.0
    assert load_classifier(imported["run"]).model.input_scale == 1.0
    x = torch.rand(2, 3, 32, 32)
    logits, layers = loaded.model.forward_layers(x)
    assert [v.shape[-1] for v in layers.values()] == [8, 8, 8]  # 64 px inside, stride 8
    plain = load_classifier(run).model
    plain.input_scale = 1.0
    upsampled = torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear")
    assert torch.allclose(logits, plain(upsampled), atol=1e-5)
    pseudo = tmp_path / "pseudo.h5"
    cams = CliRunner().invoke(app, ["cams", str(run), str(imported["val"]), "-o", str(pseudo),
                                    "--gallery", "0", "--tta", "none", "--device", "cpu", "-q"])
    assert cams.exit_code == 0, cams.output
    with Artifact(pseudo) as art:
        assert art.dataset("pseudo_masks").shape[-2:] == (32, 32)
    bad = invoke(str(imported["train"]), "-o", str(tmp_path / "bad"), "--input-scale", "5",
                 *TINY)
    assert bad.exit_code == 2 and "--input-scale" in bad.stderr, bad.stderr
    assert not (tmp_path / "bad").exists()
    from histoseg_cli.core.errors import UsageError
    from histoseg_cli.core.training import ClassifierConfig

    with pytest.raises(UsageError, match=r"must be in \[0.25, 4\]"):  # library callers too
        ClassifierConfig(data="d.h5", run_dir="r", input_scale=8)


def test_runs_saved_before_the_stride_option_resume_at_8() -> None:
    from histoseg_cli.core.training import ClassifierConfig

    saved = ClassifierConfig(data="d.h5", run_dir="r", backbone="efficientnet_lite0").as_dict()
    assert ClassifierConfig.from_dict(saved).output_stride is None  # today's: the default
    del saved["output_stride"]
    assert ClassifierConfig.from_dict(saved).output_stride == 8


def test_pretrained_state_dict_freezes_stem(imported: dict[str, Path], tmp_path: Path) -> None:
    before = load_classifier(imported["run"] / "checkpoint.pt").model.state_dict()
    result = invoke(str(imported["train"]), "-o", str(tmp_path / "ft"), "--epochs", "1",
                    "--pretrained", str(imported["run"] / "checkpoint.pt"), *TINY)
    assert result.exit_code == 0, result.output
    after = load_classifier(tmp_path / "ft").model.state_dict()
    assert torch.equal(after["backbone.conv1a.weight"], before["backbone.conv1a.weight"])
    assert torch.equal(after["backbone.b2_2.conv_branch2a.weight"],
                       before["backbone.b2_2.conv_branch2a.weight"])
    assert torch.equal(after["backbone.b4.bn_branch2a.running_mean"],
                       before["backbone.b4.bn_branch2a.running_mean"])  # BN frozen
    assert not torch.equal(after["backbone.b3.conv_branch2a.weight"],
                           before["backbone.b3.conv_branch2a.weight"])


def _write_artifact(path: Path, classes: list[str], n: int, labels: bool) -> Path:
    meta = ArtifactMeta(class_names=classes, patch_size=32)
    with ArtifactWriter(path, meta, labels=labels) as writer:
        if n:
            rows = {"labels": np.eye(len(classes), dtype=np.uint8)[np.arange(n) % len(classes)]}
            writer.append(np.zeros((n, 32, 32, 3), np.uint8), [f"p{i}" for i in range(n)],
                          **(rows if labels else {}))
    return path


def test_bad_inputs_are_one_line_errors(imported: dict[str, Path], tmp_path: Path) -> None:
    cases = [
        (_write_artifact(tmp_path / "nolabels.h5", ["a", "b"], 10, labels=False),
         "has no 'labels' dataset", 1),
        (_write_artifact(tmp_path / "empty.h5", ["a", "b"], 0, labels=True), "holds no patches",
         1),
        (_write_artifact(tmp_path / "few.h5", ["a", "b"], 4, labels=True),
         "fewer than the batch size", 1),
        (tmp_path / "missing.h5", "no such file", 1),
    ]
    for path, message, code in cases:
        result = invoke(str(path), "-o", str(tmp_path / "bad"), *TINY)
        assert result.exit_code == code, (path, result.output)
        assert message in result.stderr and "Traceback" not in result.stderr
    folder = invoke(str(imported["run"]), "-o", str(tmp_path / "bad"), *TINY)
    assert folder.exit_code == 2 and "--dataset" in folder.stderr


def test_resume_refuses_other_classes_and_existing_runs(imported: dict[str, Path],
                                                        tmp_path: Path) -> None:
    three = _write_artifact(tmp_path / "three.h5", ["a", "b", "c"], 16, labels=True)
    result = invoke(str(three), "-o", str(imported["run"]), "--resume", *TINY)
    assert result.exit_code == 1
    assert "has 3 classes" in result.stderr and "trained on 4" in result.stderr
    exists = invoke(str(imported["train"]), "-o", str(imported["run"]), *TINY)
    assert exists.exit_code == 2 and "--resume" in exists.stderr
    nothing = invoke(str(imported["train"]), "-o", str(tmp_path / "new"), "--resume", *TINY)
    assert nothing.exit_code == 1 and "nothing to resume" in nothing.stderr
    # --overwrite with a bad input fails before anything of the old run is deleted
    before = sorted(p.name for p in imported["run"].iterdir())
    bad = invoke(str(tmp_path / "missing.h5"), "-o", str(imported["run"]), "--overwrite", *TINY)
    assert bad.exit_code == 1 and "missing.h5" in bad.stderr
    assert sorted(p.name for p in imported["run"].iterdir()) == before


def test_imported_data_is_reused_only_for_the_same_folder(tmp_path: Path) -> None:
    from histoseg_cli.core.ingest.sources import resolve_sources

    for name, seed in (("a", 1), ("b", 2)):
        write_demo_dataset(tmp_path / name, DemoConfig(patch_size=32, train=6 + seed, val=2,
                                                      test=2, seed=seed))
    run = tmp_path / "run"
    first = resolve_sources(str(tmp_path / "a"), None, "luad", run, workers=1)
    assert len(Artifact(first.train)) == 7
    again = resolve_sources(str(tmp_path / "a"), None, "luad", run, workers=1)
    assert again.train.stat().st_mtime_ns == first.train.stat().st_mtime_ns  # reused
    other = resolve_sources(str(tmp_path / "b"), None, "luad", run, workers=1)
    assert len(Artifact(other.train)) == 8  # another folder: imported again


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(imported: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "histoseg_cli", "train-cls", str(imported["train"]), "--val",
           str(imported["val"]), "-o", str(run), "--epochs", "2", *TINY]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines() == [str(run / "checkpoint.pt")]  # rank 0 only
    config = json.loads((run / "config.json").read_text())
    assert config["world_size"] == 2
    rows = metrics(run)
    assert [r["iteration"] for r in rows] == [4, 8]  # global batch 8 = 2 x 4 per process
    assert "val" in rows[-1]
    assert load_classifier(run, prefer="last").info.epoch == 2


def test_channels_last_default_follows_device_precision_and_network() -> None:
    """channels_last unless asked: on CUDA, and on CPU under bf16 (oneDNN's bf16 path is
    faster in it) or for a backbone/encoder with depthwise convolutions (EfficientNet-Lite,
    faster in it even in fp32); large dense fp32 ResNets are slower in it on a CPU."""
    from histoseg_cli.core.models.base import build_backbone, has_depthwise_convolutions
    from histoseg_cli.core.models.segmenter import Segmenter
    from histoseg_cli.core.training.config import TrainConfig as Base

    def TrainConfig(**kw: object) -> Base:
        return Base(data="train.h5", run_dir="run", **kw)

    assert TrainConfig().use_channels_last("cuda")
    assert not TrainConfig().use_channels_last("cpu")
    assert TrainConfig(precision="bf16").use_channels_last("cpu")
    assert not TrainConfig(precision="bf16", channels_last=False).use_channels_last("cpu")
    assert TrainConfig(channels_last=True).use_channels_last("cpu")
    assert TrainConfig().use_channels_last("cpu", depthwise=True)
    assert not TrainConfig(channels_last=False).use_channels_last("cpu", depthwise=True)
    assert has_depthwise_convolutions(build_backbone("efficientnet_lite0", output_stride=16))
    assert not has_depthwise_convolutions(build_backbone("resnet10t", output_stride=8))
    # the segmenter's encoder decides, not its decoder (DeepLabV3+ has separable convolutions)
    assert has_depthwise_convolutions(Segmenter("efficientnet_lite0", 2).encoder)
    assert not has_depthwise_convolutions(Segmenter("resnet18", 2).encoder)


LITE = ["--backbone", "efficientnet_lite0", *TINY[4:]]  # TINY without resnet38d and --width
# TINY at width 0.125: at 0.0625 a 1x1 stride-2 convolution has 4 input channels, and
# oneDNN's channels_last backward for that shape crashes (SIGSEGV) or hangs on AVX2-only CPUs
# (torch 2.14.1); every width a user trains at has at least 8
WIDER = [*TINY[:2], "--width", "0.125", *TINY[4:]]


@pytest.mark.parametrize("args, expected", [
    (TINY, False), (["--channels-last", *WIDER], True), (LITE, True),
    (["--no-channels-last", *LITE], False)], ids=["resnet38d", "forced", "lite0", "lite0-off"])
def test_training_memory_layout_on_cpu(imported: dict[str, Path], tmp_path: Path,
                                       args: list[str], expected: bool) -> None:
    """What the network actually sees in a CPU run: contiguous for ResNet-38 in fp32,
    channels_last for EfficientNet-Lite0, and whatever --[no-]channels-last says."""
    seen: list[bool] = []

    def record(module: torch.nn.Module, inputs: tuple) -> None:
        x = inputs[0]
        if isinstance(module, torch.nn.Conv2d) and min(x.shape[1:]) > 1:  # unambiguous layout
            seen.append(x.is_contiguous(memory_format=torch.channels_last))

    hook = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        result = invoke(str(imported["train"]), "-o", str(tmp_path / "run"), "--epochs", "1",
                        *args)
    finally:
        hook.remove()
    assert result.exit_code == 0, result.output
    assert seen and set(seen) == {expected}
