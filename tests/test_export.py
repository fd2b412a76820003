"""``histoseg export``: ONNX parity with PyTorch, the model card, predict on the exported file,
and TensorRT where it can run (it cannot be installed from the package index: its libraries
come from NVIDIA's own index, so those tests are skipped elsewhere)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from histoseg_cli.app import app
from histoseg_cli.core.data.reader import Artifact
from tests.conftest import write_patches
from tests.conftest import MODEL_CLASSES as CLASSES
from tests.conftest import MODEL_PATCH as PATCH

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run(*args: object):
    result = CliRunner().invoke(app, [*map(str, args)])
    return result.exit_code, result.stdout, " ".join(result.stderr.split())


@pytest.fixture(scope="module")
def exported(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
             ) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export")
    calib = write_patches(root / "calib.h5", n=12, size=PATCH)
    code, stdout, err = run("export", models["seg"], "--classifier", models["cls"], "-o",
                            root / "model.onnx", "--calib", calib, "--samples", "8", "--json")
    assert code == 0, err
    return {"onnx": root / "model.onnx", "calib": calib, "result": json.loads(stdout)}


@pytest.mark.slow
def test_onnx_matches_pytorch_and_describes_itself(exported: dict[str, Path]):
    import onnx

    result = exported["result"]
    check = result["verification"]["onnx"]
    assert check["patches"] == 8 and check["label_agreement"] >= 0.999
    assert check["max_prob_diff"] < 1e-3 and check["gate_max_diff"] < 1e-3
    model = onnx.load(exported["onnx"])
    card = json.loads({p.key: p.value for p in model.metadata_props}["histoseg"])
    assert card["class_names"] == CLASSES and card["patch_size"] == PATCH
    assert card["gate"] == "classifier" and card["gate_threshold"] == 0.1
    assert card["runtime"] == "onnx" and card["version"] and len(card["palette"]) == 5
    assert set(card["normalisation"]) == {"segmenter", "classifier"}
    inputs = {i.name: i for i in model.graph.input}
    dims = inputs["patches"].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [PATCH, PATCH, 3]
    assert inputs["patches"].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    outputs = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
    assert outputs == {"labels": onnx.TensorProto.UINT8, "probs": onnx.TensorProto.FLOAT,
                       "gate": onnx.TensorProto.FLOAT}


@pytest.mark.slow
def test_predict_on_the_onnx_file_writes_what_the_checkpoint_writes(
        exported: dict[str, Path], models: dict[str, Path], tmp_path: Path):
    rng = np.random.default_rng(3)
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(rng.integers(0, 255, (45, 60, 3), dtype=np.uint8)).save(images / "a.png")
    for name, model, extra in (("torch", models["seg"], ["--classifier", models["cls"]]),
                               ("onnx", exported["onnx"], [])):
        code, _, err = run("predict", model, images, "-o", tmp_path / name, "--device", "cpu",
                           "-q", *extra)
        assert code == 0, err
        code, _, err = run("predict", model, exported["calib"], "-o", tmp_path / f"{name}.h5",
                           "--device", "cpu", "-q", *extra)
        assert code == 0, err
    a = np.asarray(Image.open(tmp_path / "torch" / "a.png"))
    b = np.asarray(Image.open(tmp_path / "onnx" / "a.png"))
    assert (a == b).mean() >= 0.999
    with Artifact(tmp_path / "torch.h5") as x, Artifact(tmp_path / "onnx.h5") as y:
        assert (x.dataset("predictions")[:] == y.dataset("predictions")[:]).mean() >= 0.999
        assert y.meta.extra["runtime"] == "onnx"
    code, _, err = run("predict", exported["onnx"], images, "-o", tmp_path / "x",
                       "--classifier", models["cls"])
    assert code == 2 and "carries its gate inside" in err
    code, _, err = run("predict", exported["onnx"], images, "-o", tmp_path / "x",
                       "--gate-threshold", "0.3")
    assert code == 2 and "exported with the gate at 0.1" in err


@pytest.mark.slow
def test_fp16_export_runs_in_onnxruntime(models: dict[str, Path], exported: dict[str, Path],
                                         tmp_path: Path):
    code, stdout, err = run("export", models["seg"], "-o", tmp_path / "half.onnx", "--calib",
                            exported["calib"], "--samples", "4", "--precision", "fp16",
                            "--json", "-q")
    assert code == 0, err
    check = json.loads(stdout)["verification"]["onnx"]
    assert check["label_agreement"] > 0.99 and check["max_prob_diff"] < 0.05


@pytest.mark.slow
def test_int8_export_is_quantized_verified_and_predicts(
        models: dict[str, Path], exported: dict[str, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch):
    import onnx

    from histoseg_cli.core.export import verify

    # The fixture models are barely trained: their logits sit near decision boundaries, where
    # int8 rounding flips labels (98.0% here, close to the 97% a real export must keep).
    monkeypatch.setitem(verify.MIN_AGREEMENT, "int8", 0.95)

    path = tmp_path / "int8.onnx"
    code, stdout, err = run("export", models["seg"], "--classifier", models["cls"], "-o", path,
                            "--calib", exported["calib"], "--samples", "6", "--precision",
                            "int8", "--json", "-q")
    assert code == 0, err
    result = json.loads(stdout)
    assert result["precision"] == "int8"
    assert result["verification"]["onnx"]["label_agreement"] >= 0.95
    model = onnx.load(path)
    ops = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    card = json.loads({p.key: p.value for p in model.metadata_props}["histoseg"])
    assert card["precision"] == "int8" and card["class_names"] == CLASSES
    assert [p.name for p in tmp_path.iterdir()] == ["int8.onnx"]  # no fp32 leftover
    code, _, err = run("predict", path, exported["calib"], "-o", tmp_path / "pred.h5",
                       "--device", "cpu", "-q")
    assert code == 0, err
    with Artifact(tmp_path / "pred.h5") as pred:
        assert pred.dataset("predictions").shape == (12, PATCH, PATCH)
        assert pred.meta.extra["runtime"] == "onnx"


@pytest.mark.slow
def test_a_failed_verification_keeps_nothing(models: dict[str, Path], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch):
    from histoseg_cli.core.export import verify

    monkeypatch.setitem(verify.MIN_AGREEMENT, "fp32", 1.01)  # no export can pass
    calib = write_patches(tmp_path / "calib.h5", n=4, size=PATCH)
    code, _, err = run("export", models["plain"], "-o", tmp_path / "m.onnx", "--calib", calib,
                       "--samples", "2")
    assert code == 1 and "not kept" in err
    assert not (tmp_path / "m.onnx").exists()


def test_export_errors_are_one_line(models: dict[str, Path], tmp_path: Path):
    code, _, err = run("export", models["seg"], "-o", tmp_path / "m.bin")
    assert code == 2 and "name it .onnx or .engine" in err
    code, _, err = run("export", models["seg"], "-o", tmp_path / "m.onnx", "--precision", "int4")
    assert code == 2 and "--precision" in err
    code, _, err = run("export", models["seg"], "-o", tmp_path / "m.engine", "--precision",
                       "int8")
    assert code == 2 and "int8 is for ONNX files" in err
    code, _, err = run("export", tmp_path / "none", "-o", tmp_path / "m.onnx")
    assert code == 1 and "no such file or folder" in err
    code, _, err = run("export", models["seg"], "-o", tmp_path / "m.onnx", "--calib",
                       tmp_path / "missing.h5")
    assert code == 1 and "no patches to verify the export on" in err
    if not torch.cuda.is_available():
        code, _, err = run("export", models["seg"], "-o", tmp_path / "m.engine")
        assert code == 1 and "need a CUDA GPU" in err and "Traceback" not in err


@pytest.mark.gpu
@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None,
                    reason="TensorRT is not installed (it comes from NVIDIA's index, not PyPI)")
@pytest.mark.skipif(not torch.cuda.is_available(), reason="TensorRT engines need a CUDA GPU")
def test_tensorrt_engine_matches_and_predicts(models: dict[str, Path],
                                              exported: dict[str, Path], tmp_path: Path):
    engine = tmp_path / "model.engine"
    code, stdout, err = run("export", models["seg"], "--classifier", models["cls"], "-o",
                            engine, "--calib", exported["calib"], "--max-batch", "8", "--json",
                            "--timing-cache", tmp_path / "trt.cache", "-q")
    assert code == 0, err
    result = json.loads(stdout)
    assert result["verification"]["engine"]["label_agreement"] > 0.99
    assert (tmp_path / "model.engine.json").is_file() and (tmp_path / "trt.cache").is_file()
    code, _, err = run("predict", engine, exported["calib"], "-o", tmp_path / "p.h5", "-q")
    assert code == 0, err
    code, _, err = run("predict", engine, exported["calib"], "-o", tmp_path / "q.h5",
                       "--batch-size", "16")
    assert code == 2 and "outside the engine's profile" in err
