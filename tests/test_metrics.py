"""Pooled confusion matrix and IoU scores on a hand-made case."""

from __future__ import annotations

import numpy as np

from histoseg_cli.core.cams.metrics import LayerMetrics
from histoseg_cli.core.metrics.confusion import ConfusionMatrix


def test_confusion_matrix_scores_by_hand():
    truth = np.array([[0, 0, 1, 1], [2, 2, 3, 3]])  # 3 = background/exclude for C = 3
    pred = np.array([[0, 1, 1, 1], [2, 3, 0, 2]])  # 3 predicted = pseudo background
    cm = ConfusionMatrix(["a", "b", "c"])
    cm.update(pred, truth)
    # rows truth a, b, c; columns a, b, c, other
    assert cm.matrix.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 1, 1]]
    s = cm.scores()
    # a: TP1 FP0 FN1 -> 1/2; b: TP2 FP1 FN0 -> 2/3; c: TP1 FP0 FN1 (to background) -> 1/2
    assert np.allclose(s.iou, [1 / 2, 2 / 3, 1 / 2])
    assert np.isclose(s.miou, (1 / 2 + 2 / 3 + 1 / 2) / 3)
    assert np.isclose(s.fwiou, (2 * 1 / 2 + 2 * 2 / 3 + 2 * 1 / 2) / 6)
    assert np.isclose(s.accuracy, 4 / 6) and s.pixels == 6


def test_classes_never_seen_are_nan_and_left_out_of_miou():
    cm = ConfusionMatrix(["a", "b", "c"])
    cm.update(np.array([0, 0, 1]), np.array([0, 0, 1]))
    s = cm.scores()
    assert np.isnan(s.iou[2]) and s.miou == 1.0
    assert s.as_dict()["iou"] == {"a": 1.0, "b": 1.0, "c": None}
    empty = ConfusionMatrix(["a"]).scores()
    assert np.isnan(empty.miou) and empty.pixels == 0


def test_layer_metrics_pool_over_batches():
    metrics = LayerMetrics(["l1", "l2"], ["a", "b"])
    truth = np.array([[[0, 1]], [[1, 1]]])
    masks = np.stack([truth, np.zeros_like(truth)], axis=1)  # l1 perfect, l2 all "a"
    metrics.update(masks[:1], truth[:1])
    metrics.update(masks[1:], truth[1:])
    scores = metrics.scores()
    assert scores["l1"].miou == 1.0
    assert np.allclose(scores["l2"].iou, [1 / 4, 0.0])
    assert metrics.table().row_count == 2
