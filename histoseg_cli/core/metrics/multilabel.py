"""Multi-label classification metrics reported on the validation set each epoch."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def _auc(scores: np.ndarray, truth: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney U statistic; NaN when one of the two groups is empty."""
    from scipy.stats import mannwhitneyu  # 1.3 s to import: only runs with --val pay it

    pos, neg = scores[truth > 0.5], scores[truth <= 0.5]
    if len(pos) == 0 or len(neg) == 0:
        return math.nan
    return float(mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg)))


def _f1(pred: np.ndarray, truth: np.ndarray) -> float:
    tp = float(np.sum(pred & truth))
    denominator = float(np.sum(pred)) + float(np.sum(truth))
    return 2 * tp / denominator if denominator else math.nan


def _clean(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 6)


def multilabel_metrics(probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                       threshold: float = 0.5) -> dict[str, object]:
    """Per-class F1 and AUC, their means, and exact-match accuracy (all classes right).

    Undefined values (a class never present, or never absent) are ``None`` and left out of
    the means.
    """
    truth = labels > 0.5
    pred = probs > threshold
    f1 = [_f1(pred[:, k], truth[:, k]) for k in range(len(class_names))]
    auc = [_auc(probs[:, k], labels[:, k]) for k in range(len(class_names))]

    def mean(values: list[float]) -> float | None:
        valid = [v for v in values if not math.isnan(v)]
        return round(float(np.mean(valid)), 6) if valid else None

    return {
        "f1": {name: _clean(v) for name, v in zip(class_names, f1)},
        "auc": {name: _clean(v) for name, v in zip(class_names, auc)},
        "mean_f1": mean(f1),
        "mean_auc": mean(auc),
        "exact_match": round(float(np.mean(np.all(pred == truth, axis=1))), 6),
    }
