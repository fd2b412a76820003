"""Shared fixtures: CLI runner, real data, a tiny Grad-CAM-ready classifier, small artifacts."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from histoseg_cli.app import app
from histoseg_cli.core.data.format import ArtifactMeta
from histoseg_cli.core.data.writer import ArtifactWriter
from histoseg_cli.core.models.base import Backbone, PatchClassifier
from histoseg_cli.core.models.checkpoint import save_checkpoint
from histoseg_cli.core.models.classifier import ClassifierInfo, build_classifier
from histoseg_cli.core.models.segmenter import Segmenter, SegmenterInfo

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``-n N``) the workers share the cores: each worker, and every
    histoseg process its tests start, gets cores / N threads instead of all of them."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        os.environ.setdefault("OMP_NUM_THREADS",
                              str(max(1, (os.cpu_count() or 1) // int(workers))))
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture
def shared_data() -> Path:
    """../shared/data beside the project, or skip (a user's checkout will not have it)."""
    if not SHARED_DATA.is_dir():
        pytest.skip("real H&E data not found at ../shared/data")
    return SHARED_DATA.resolve()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy machine OpenMP spin-waits
    make two threads many times slower than one."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


class Cli:
    """Runs ``histoseg ARGS`` in-process; result has .exit_code, .stdout, .stderr."""

    def __init__(self) -> None:
        self.runner = CliRunner()

    def __call__(self, *args: object):  # noqa: ANN204 - click's Result
        return self.runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def cli() -> Cli:
    return Cli()


class TinyBackbone(Backbone):
    """Three CAM layers at 1/4 resolution, shaped like ResNet-38's b4_5 / b5_2 / bn7."""

    cam_layers = ("b4_5", "b5_2", "bn7")
    layer_channels = (8, 16, 32)

    def __init__(self) -> None:
        super().__init__()
        self.entry = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, 2, 1))
        self.b5 = nn.Sequential(nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1))
        self.b7 = nn.Sequential(nn.BatchNorm2d(16), nn.ReLU(),
                                nn.Conv2d(16, 32, 3, padding=2, dilation=2), nn.BatchNorm2d(32),
                                nn.ReLU())

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        a = self.entry(x)
        b = self.b5(a)
        return {"b4_5": a, "b5_2": b, "bn7": self.b7(b)}


def make_tiny_classifier(num_classes: int = 4, seed: int = 0) -> PatchClassifier:
    """A randomly initialised classifier in eval mode with non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    model = PatchClassifier(TinyBackbone(), num_classes)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
            nn.init.uniform_(module.weight, 0.5, 1.5)
    return model.eval()


@pytest.fixture
def tiny_classifier() -> PatchClassifier:
    return make_tiny_classifier()


def write_patches(path: Path, n: int = 10, size: int = 32, num_classes: int = 4,
                  masks: bool = True, seed: int = 0, names: list[str] | None = None) -> Path:
    """A patches artifact of random tissue-like patches, some with a white area."""
    rng = np.random.default_rng(seed)
    images = rng.integers(60, 180, size=(n, size, size, 3), dtype=np.uint8)
    images[::3, : size // 2, : size // 2] = 250  # glass in a corner of every third patch
    truth = rng.integers(0, num_classes, size=(n, size, size), dtype=np.uint8)
    truth[::3, : size // 2, : size // 2] = num_classes
    labels = np.zeros((n, num_classes), dtype=np.uint8)
    for i in range(n):
        labels[i, rng.choice(num_classes, size=1 + i % 3, replace=False)] = 1
    meta = ArtifactMeta(class_names=[f"c{k}" for k in range(num_classes)], patch_size=size,
                        created_by="test", extra={"background": "white"})
    with ArtifactWriter(path, meta, labels=True, masks=masks) as writer:
        rows = {"labels": labels, **({"masks": truth} if masks else {})}
        writer.append(images, names or [f"p{i:03d}" for i in range(n)], **rows)
    return path


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny trained pipeline the fault suites (tests/faults) run on, built once: it takes
    seconds of real training, and those suites only read it."""
    pytest.importorskip("tifffile")
    from faults.harness import build_pipeline

    return build_pipeline(tmp_path_factory.mktemp("pipeline"))


MODEL_CLASSES = ["c0", "c1", "c2", "c3"]
MODEL_PATCH = 32


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Untrained checkpoints at 32 px: a segmenter with a gate head, one without, a small
    ResNet-38 classifier of the same classes and one of other classes."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    seg = Segmenter("resnet18", 4, 16, gate_head=True).eval()
    info = SegmenterInfo(class_names=MODEL_CLASSES, patch_size=MODEL_PATCH, mpp=1.0, encoder="resnet18",
                         gate_head=True)
    save_checkpoint(root / "seg" / "checkpoint.pt", seg, info)
    plain = Segmenter("resnet18", 4, 16).eval()
    save_checkpoint(root / "plain.pt", plain, SegmenterInfo(
        class_names=MODEL_CLASSES, patch_size=MODEL_PATCH, mpp=1.0, encoder="resnet18"))
    cinfo = ClassifierInfo(class_names=MODEL_CLASSES, patch_size=MODEL_PATCH, backbone="resnet38d",
                           backbone_kwargs={"width": 0.0625})
    save_checkpoint(root / "cls.pt", build_classifier(cinfo).eval(), cinfo)
    other = ClassifierInfo(class_names=["x", "y"], patch_size=MODEL_PATCH, backbone="resnet38d",
                           backbone_kwargs={"width": 0.0625})
    save_checkpoint(root / "other.pt", build_classifier(other).eval(), other)
    return {"seg": root / "seg", "plain": root / "plain.pt", "cls": root / "cls.pt",
            "other": root / "other.pt"}
