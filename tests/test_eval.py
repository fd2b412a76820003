"""``histoseg eval``: pooled scores against hand-computed matrices, reports, and clear errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from histoseg_cli.app import app
from histoseg_cli.core.data.format import ArtifactMeta
from histoseg_cli.core.data.writer import ArtifactWriter
from histoseg_cli.core.imageio import save_label_png
from histoseg_cli.core.metrics.evaluate import EvalRequest, run_eval

CLASSES = ["a", "b", "c", "d"]
PALETTE = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 255, 255]],
                   np.uint8)


def run(*args: object):
    result = CliRunner().invoke(app, ["eval", *map(str, args)])
    return result.exit_code, result.stdout, " ".join(result.stderr.split())


def _grey(path: Path, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(labels.astype(np.uint8), mode="L").save(path)


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """Two images. Truth uses a, b, 4 (= excluded); c is only predicted; d is in neither."""
    truth1 = np.array([[0, 0, 1], [1, 4, 4]])
    pred1 = np.array([[0, 1, 1], [2, 0, 1]])  # the last two pixels are excluded
    truth2 = np.array([[1, 1], [0, 0]])
    pred2 = np.array([[1, 2], [0, 4]])  # 4 predicted = background: a miss for class a
    for name, t, p in (("one", truth1, pred1), ("two", truth2, pred2)):
        _grey(tmp_path / "gt" / f"{name}.png", t)
        (tmp_path / "pred").mkdir(exist_ok=True)
        save_label_png(tmp_path / "pred" / f"{name}.png", p, PALETTE, CLASSES)
    return tmp_path / "pred", tmp_path / "gt"


def test_pooled_scores_match_the_hand_computed_matrix(folders: tuple[Path, Path]):
    pred, gt = folders
    result = run_eval(EvalRequest(pred, gt))
    # pixels kept: image one 4 (truth a a b b -> pred a b b c), image two 4 (b b a a -> b c a bg)
    # rows truth a, b, c, d; columns a, b, c, d, other
    assert result.matrix.matrix.tolist() == [[2, 1, 0, 0, 1], [0, 2, 2, 0, 0],
                                            [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]
    s = result.scores
    # a: TP 2, FP 0, FN 2 -> 1/2; b: TP 2, FP 1, FN 2 -> 2/5; c: TP 0, FP 2 -> 0; d: n/a
    assert np.allclose(s.iou[:3], [1 / 2, 2 / 5, 0.0]) and np.isnan(s.iou[3])
    assert np.isclose(s.miou, (1 / 2 + 2 / 5 + 0) / 3)
    assert np.isclose(s.fwiou, (4 * 1 / 2 + 4 * 2 / 5) / 8)
    assert np.isclose(s.accuracy, 4 / 8) and s.pixels == 8
    assert [r["name"] for r in result.per_image] == ["one", "two"]
    assert result.per_image[0]["pixels"] == 4 and np.isclose(result.per_image[0]["accuracy"],
                                                             2 / 4)


def test_cli_json_and_reports(folders: tuple[Path, Path], tmp_path: Path):
    pred, gt = folders
    code, stdout, _ = run(pred, gt, "--json")
    assert code == 0
    payload = json.loads(stdout)
    assert {"miou", "fwiou", "accuracy", "iou", "pixels"} <= set(payload)
    assert payload["iou"]["d"] is None and payload["pixels"] == 8
    code, stdout, _ = run(pred, gt, "-o", tmp_path / "out" / "metrics.json", "-q")
    assert code == 0
    paths = stdout.split()
    assert [Path(p).name for p in paths] == ["metrics.json", "metrics.confusion.png",
                                            "metrics.per-image.csv"]
    rows = list(csv.DictReader(open(tmp_path / "out" / "metrics.per-image.csv")))
    assert [r["name"] for r in rows] == ["one", "two"] and rows[0]["iou_d"] == ""
    assert Image.open(tmp_path / "out" / "metrics.confusion.png").size[0] > 100


def test_missing_and_extra_maps_are_counted(folders: tuple[Path, Path]):
    pred, gt = folders
    for i in range(5):
        _grey(gt / f"extra{i}.png", np.zeros((2, 3)))
    code, _, err = run(pred, gt)
    assert code == 1
    assert f"{pred}: no prediction for 5 of the 7 ground-truth maps" in err
    assert "(first: extra0, extra1, extra2); --only-predicted scores only" in err
    assert "Traceback" not in err
    # a subset's predictions against the whole folder: the same scores as without the extras
    code, stdout, err = run(pred, gt, "--only-predicted", "--json")
    assert code == 0, err
    subset = json.loads(stdout)
    assert subset["images"] == 2 and subset["unpredicted"] == 5 and subset["pixels"] == 8
    assert np.isclose(subset["miou"], (1 / 2 + 2 / 5 + 0) / 3)
    assert "scoring the 2 of 7 ground-truth maps that have a prediction" in err
    for i in range(5):
        (gt / f"extra{i}.png").unlink()
    (gt / "two.png").unlink()
    code, _, err = run(pred, gt)
    assert code == 1 and "no ground truth for 1 of the 2 predictions" in err
    code, _, err = run(pred, gt, "--only-predicted")  # a prediction is never left out
    assert code == 1 and "no ground truth for 1 of the 2 predictions" in err
    (gt / "one.png").unlink()
    _grey(gt / "other.png", np.zeros((2, 3)))
    code, _, err = run(pred, gt, "--only-predicted")
    assert code == 1 and "no prediction for 1 of the 1 ground-truth maps" in err


def test_size_mismatch_names_both_files(folders: tuple[Path, Path]):
    pred, gt = folders
    _grey(gt / "two.png", np.zeros((3, 2)))
    code, _, err = run(pred, gt)
    assert code == 1
    assert f"{pred / 'two.png'}: is 2x2 px but its ground truth {gt / 'two.png'} is 2x3 px" in err


def test_rgb_ground_truth_is_refused(folders: tuple[Path, Path]):
    pred, gt = folders
    Image.new("RGB", (3, 2)).save(gt / "one.png")
    code, _, err = run(pred, gt)
    assert code == 1 and f"{gt / 'one.png'}: mask has mode RGB" in err


def test_class_mismatch_between_artifacts(tmp_path: Path):
    def artifact(path: Path, classes: list[str], kind: str) -> Path:
        meta = ArtifactMeta(class_names=classes, patch_size=4, created_by="test")
        with ArtifactWriter(path, meta, masks=True) as writer:
            writer.append(np.zeros((1, 4, 4, 3), np.uint8), ["p0"],
                          masks=np.zeros((1, 4, 4), np.uint8))
        return path

    a = artifact(tmp_path / "a.h5", ["x", "y"], "patches")
    b = artifact(tmp_path / "b.h5", ["x", "y", "z"], "patches")
    code, _, err = run(a, b)
    assert code == 1 and "classes ['x', 'y'] differ from the ground truth's" in err
    code, stdout, _ = run(a, a, "--json")
    assert code == 0 and json.loads(stdout)["accuracy"] == 1.0
    code, _, err = run(a, a, "--classes", "p,q,r")
    assert code == 1 and "--classes gives 3" in err


def test_labels_beyond_the_classes_are_refused(folders: tuple[Path, Path]):
    pred, gt = folders
    save_label_png(pred / "one.png", np.full((2, 3), 7), PALETTE, CLASSES)
    code, _, err = run(pred, gt)
    assert code == 1 and "holds label 7, but there are 4 classes" in err


def test_folders_of_artifacts_pair_by_relative_path(tmp_path: Path):
    """A patch in each of two artifacts; the ground truth's folder lacks one of them."""
    def artifact(path: Path, masks: np.ndarray, classes: list[str] = CLASSES[:2]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = ArtifactMeta(class_names=classes, patch_size=2, created_by="test")
        with ArtifactWriter(path, meta, masks=True) as writer:
            writer.append(np.zeros((1, 2, 2, 3), np.uint8), ["p0"], masks=masks[None])

    artifact(tmp_path / "pred" / "s1" / "a.h5", np.array([[0, 1], [1, 1]], np.uint8))
    artifact(tmp_path / "pred" / "s2" / "a.h5", np.array([[0, 0], [0, 0]], np.uint8))
    artifact(tmp_path / "gt" / "s1" / "a.h5", np.array([[0, 0], [1, 1]], np.uint8))
    code, _, err = run(tmp_path / "pred", tmp_path / "gt")
    assert code == 1 and f"{tmp_path / 'gt'}: no ground truth for 1 of the 2" in err
    assert "(first: s2/a/p0)" in err
    artifact(tmp_path / "gt" / "s2" / "a.h5", np.array([[1, 1], [0, 0]], np.uint8))
    code, stdout, err = run(tmp_path / "pred", tmp_path / "gt", "--json")
    assert code == 0, err
    # truth a a b b | b b a a; pred a b b b | a a a a: a TP 3 FP 2 FN 1; b TP 2 FP 1 FN 2
    assert np.isclose(json.loads(stdout)["miou"], (3 / 6 + 2 / 5) / 2)
    artifact(tmp_path / "gt" / "s3" / "a.h5", np.zeros((2, 2), np.uint8), ["x", "y"])
    code, _, err = run(tmp_path / "pred", tmp_path / "gt")
    assert code == 1 and f"{tmp_path / 'gt' / 's3' / 'a.h5'}: classes ['x', 'y'] differ" in err
