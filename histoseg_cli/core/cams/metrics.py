"""Pseudo-mask quality per CAM layer against ground-truth masks: what users tune stage 1 by."""

from __future__ import annotations

import numpy as np
from rich.table import Table

from histoseg_cli.core.metrics.confusion import ConfusionMatrix, SegScores


class LayerMetrics:
    """One pooled confusion matrix per layer; pseudo background (label C) counts as a miss."""

    def __init__(self, layers: list[str] | tuple[str, ...], class_names: list[str]) -> None:
        self.layers = list(layers)
        self.class_names = list(class_names)
        self.matrices = {layer: ConfusionMatrix(class_names) for layer in self.layers}

    def update(self, masks: np.ndarray, truth: np.ndarray) -> None:
        """``masks`` (B, L, H, W) pseudo masks, ``truth`` (B, H, W) ground truth."""
        for j, layer in enumerate(self.layers):
            self.matrices[layer].update(masks[:, j], truth)

    def scores(self) -> dict[str, SegScores]:
        return {layer: m.scores() for layer, m in self.matrices.items()}

    def as_dict(self) -> dict[str, dict[str, object]]:
        return {layer: s.as_dict() for layer, s in self.scores().items()}

    def table(self) -> Table:
        """Rows = layers; columns = mIoU and IoU per class, in %."""
        table = Table(title="pseudo-mask IoU vs ground truth (%)", title_justify="left")
        table.add_column("layer")
        table.add_column("mIoU", justify="right")
        for name in self.class_names:
            table.add_column(name, justify="right")
        for layer, s in self.scores().items():
            table.add_row(layer, _pct(s.miou), *(_pct(v) for v in s.iou))
        return table


def _pct(value: float) -> str:
    return "-" if np.isnan(value) else f"{100 * value:.2f}"
