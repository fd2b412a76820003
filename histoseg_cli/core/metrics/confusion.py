"""Pixel confusion matrix and the segmentation scores derived from it (docs/method.md, Evaluation).

One matrix accumulates over every evaluated pixel of a whole set, so scores are pooled, not
averaged per image. Ground-truth labels >= C (background / exclude) are left out. Predictions
>= C (e.g. the background label of pseudo masks) are kept in one extra "other" column: such a
pixel is a miss for its true class and a false positive for none.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SegScores:
    """Pooled scores of one confusion matrix; per-class arrays are NaN where undefined."""

    class_names: tuple[str, ...]
    iou: np.ndarray  # (C,)
    miou: float
    fwiou: float
    accuracy: float
    pixels: int

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly: NaN becomes None."""
        def clean(x: float) -> float | None:
            return None if np.isnan(x) else round(float(x), 6)

        return {"miou": clean(self.miou), "fwiou": clean(self.fwiou),
                "accuracy": clean(self.accuracy), "pixels": self.pixels,
                "iou": {n: clean(v) for n, v in zip(self.class_names, self.iou)}}


class ConfusionMatrix:
    """Counts (true class, predicted class) pixel pairs; ``update`` per batch, ``scores`` once."""

    def __init__(self, class_names: list[str] | tuple[str, ...]) -> None:
        self.class_names = tuple(class_names)
        c = len(self.class_names)
        self.matrix = np.zeros((c, c + 1), dtype=np.int64)  # last column: predicted >= C

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def update(self, pred: np.ndarray, truth: np.ndarray) -> None:
        """Add pixels of ``pred`` against ``truth`` (same shape, integer labels)."""
        pred = np.asarray(pred)
        truth = np.asarray(truth)
        if pred.shape != truth.shape:
            raise ValueError(f"prediction shape {pred.shape} != ground truth {truth.shape}")
        c = self.num_classes
        keep = truth < c
        t = truth[keep].astype(np.int64)
        p = np.minimum(pred[keep].astype(np.int64), c)
        self.matrix += np.bincount(t * (c + 1) + p, minlength=c * (c + 1)).reshape(c, c + 1)

    def scores(self) -> SegScores:
        """IoU_k = TP / (TP + FP + FN); mIoU NaN-safe; FwIoU weighted by true pixel counts."""
        m = self.matrix.astype(np.float64)
        c = self.num_classes
        tp = np.diag(m[:, :c])
        truth = m.sum(axis=1)
        predicted = m[:, :c].sum(axis=0)
        union = truth + predicted - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, tp / union, np.nan)
        total = truth.sum()
        present = ~np.isnan(iou)
        miou = float(np.nanmean(iou)) if present.any() else float("nan")
        fwiou = float((truth[present] * iou[present]).sum() / total) if total else float("nan")
        accuracy = float(tp.sum() / total) if total else float("nan")
        return SegScores(self.class_names, iou, miou, fwiou, accuracy, int(total))
