"""CUDA paths: training step, Grad-CAM equivalence and the cams command on a GPU.

Skipped where no GPU is present (CI has none); run on a GPU machine with plain pytest.
"""

from __future__ import annotations

import json

import pytest
import torch

from histoseg_cli.core.cams.gradcam import gradcam
from benchmarks.naive_gradcam import naive_gradcam
from histoseg_cli.core.data.demo import DemoConfig, write_demo_dataset

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_batched_gradcam_matches_reference_loop_on_cuda(tiny_classifier):
    torch.backends.cudnn.allow_tf32 = False  # fp32 for the comparison, as on CPU
    try:
        model = tiny_classifier.cuda()
        x = torch.rand(4, 3, 48, 48, device="cuda")
        _, fast = gradcam(model, x)
        slow = naive_gradcam(model, x)
        for name in fast:
            scale = slow[name].abs().max()
            assert (fast[name] - slow[name]).abs().max() <= 1e-4 * scale
    finally:
        torch.backends.cudnn.allow_tf32 = True


def test_train_cls_then_cams_on_cuda(tmp_path, cli):
    write_demo_dataset(tmp_path / "demo", DemoConfig(patch_size=64, train=40, val=8, test=4))
    run = tmp_path / "run"
    res = cli("train-cls", tmp_path / "demo", "--dataset", "luad", "-o", run, "--backbone",
              "resnet38d", "--width", "0.25", "--epochs", "2", "--batch-size", "8",
              "--pda-warmup", "1", "--device", "cuda", "--json", "-q")
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["train_loss"] == r["train_loss"] for r in rows)  # not NaN
    res = cli("cams", run, run / "data" / "val.h5", "-o", tmp_path / "p.h5", "--device", "cuda",
              "--json", "-q")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["device"].startswith("cuda") and summary["num_patches"] == 8
    assert set(summary["metrics"]) == {"b4_5", "b5_2", "bn7"}
