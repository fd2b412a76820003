"""Scoring predicted label maps against ground truth: pooled scores, per-image rows, reports.

One confusion matrix accumulates over every pixel of every matched pair (ground-truth labels
>= C are left out), so the scores are the pooled ones of docs/method.md; per-image scores are
reported beside them for finding the images that pull the average down.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from histoseg_cli.core.atomic import write_csv_atomic, write_text_atomic
from histoseg_cli.core.errors import InputError
from histoseg_cli.core.metrics.confusion import ConfusionMatrix, SegScores
from histoseg_cli.core.metrics.labelsets import match, open_label_set, resolve_classes
from histoseg_cli.core.progress import SILENT, Reporter

log = logging.getLogger("histoseg")


@dataclass
class Evaluation:
    """Pooled scores, the matrix behind them, and one row per image."""

    scores: SegScores
    matrix: ConfusionMatrix
    per_image: list[dict[str, Any]] = field(default_factory=list)
    #: Ground-truth maps left out for want of a prediction (``only_predicted``), else None.
    unpredicted: int | None = None

    def as_dict(self) -> dict[str, Any]:
        out = {**self.scores.as_dict(), "images": len(self.per_image)}
        if self.unpredicted is not None:
            out["unpredicted"] = self.unpredicted
        return out


def _check_pair(pred: np.ndarray, truth: np.ndarray, where_pred: str, where_truth: str,
                num_classes: int) -> None:
    if pred.shape != truth.shape:
        raise InputError(where_pred, f"is {_size(pred)} but its ground truth {where_truth} is "
                         f"{_size(truth)}; expected the same size")
    top = int(pred.max(initial=0))
    if top > num_classes:
        raise InputError(where_pred, f"holds label {top}, but there are {num_classes} classes "
                         f"(labels 0-{num_classes - 1}, {num_classes} = background)")


def _size(a: np.ndarray) -> str:
    return f"{a.shape[1]}x{a.shape[0]} px" if a.ndim == 2 else f"shape {a.shape}"


@dataclass
class EvalRequest:
    """Everything ``eval`` was asked: predicted label maps and their ground truth (artifacts
    or folders of label PNGs, matched by name), and class names when neither records them."""

    pred: Path
    truth: Path
    classes: list[str] | None = None
    #: Score only the ground-truth maps that have a prediction (a subset's predictions
    #: against a whole mask folder); otherwise a missing prediction is an error.
    only_predicted: bool = False


def run_eval(req: EvalRequest, reporter: Reporter = SILENT) -> Evaluation:
    """Score the predicted label maps against the ground truth."""
    truth = open_label_set(req.truth, prefer=("masks",))
    pred = open_label_set(req.pred)
    names = match(pred, truth, req.only_predicted)
    unpredicted = len(truth.names) - len(names) if req.only_predicted else None
    if unpredicted:
        log.info("scoring the %d of %d ground-truth maps that have a prediction", len(names),
                 len(truth.names))
    class_names = resolve_classes(pred, truth, req.classes)
    c = len(class_names)
    pooled = ConfusionMatrix(class_names)
    rows = []
    for name in reporter.track(names, total=len(names), description="eval", unit="images"):
        p, t = pred.read(name), truth.read(name)
        _check_pair(p, t, pred.describe(name), truth.describe(name), c)
        one = ConfusionMatrix(class_names)
        one.update(p, t)
        pooled.matrix += one.matrix
        s = one.scores()
        rows.append({"name": name, "pixels": s.pixels, "accuracy": s.accuracy, "miou": s.miou,
                     **{f"iou_{n}": v for n, v in zip(class_names, s.iou)}})
    return Evaluation(pooled.scores(), pooled, rows, unpredicted)


def scores_table(scores: SegScores, title: str = "eval") -> Table:
    """IoU per class and the summary scores, for stderr."""
    table = Table(title=f"{title}: {scores.pixels} pixels", title_justify="left")
    table.add_column("class")
    table.add_column("IoU", justify="right")
    for name, value in zip(scores.class_names, scores.iou):
        table.add_row(name, "n/a" if np.isnan(value) else f"{value:.4f}")
    for label, value in (("mIoU", scores.miou), ("FwIoU", scores.fwiou),
                         ("ACC", scores.accuracy)):
        table.add_row(f"[bold]{label}[/]", "n/a" if np.isnan(value) else f"[bold]{value:.4f}[/]")
    return table


def report_paths(output: Path) -> dict[str, Path]:
    """Where the reports go: ``output`` (JSON) and, beside it, the matrix PNG and the CSV."""
    stem = output.name.removesuffix(".json")
    return {"json": output, "confusion": output.with_name(f"{stem}.confusion.png"),
            "per_image": output.with_name(f"{stem}.per-image.csv")}


def write_reports(result: Evaluation, output: Path) -> dict[str, Path]:
    """Metrics JSON, confusion-matrix PNG and per-image CSV, each written atomically."""
    paths = report_paths(output)
    write_text_atomic(paths["json"], json.dumps(result.as_dict(), indent=2) + "\n")
    fields = list(result.per_image[0]) if result.per_image else ["name"]
    write_csv_atomic(paths["per_image"], fields, (
        {k: round(v, 6) if isinstance(v, float) and not np.isnan(v) else v
         for k, v in row.items()} for row in result.per_image))
    confusion_figure(result.matrix, paths["confusion"])
    return paths


def confusion_figure(matrix: ConfusionMatrix, path: Path) -> Path:
    """Row-normalised confusion matrix (share of each true class) with the pixel counts."""
    from histoseg_cli.core.figures import new_figure, save_figure

    names = list(matrix.class_names)
    counts = matrix.matrix
    columns = names + (["other"] if counts[:, -1].any() else [])
    counts = counts[:, :len(columns)]
    with np.errstate(invalid="ignore", divide="ignore"):
        share = counts / counts.sum(axis=1, keepdims=True)
    size = 1.2 + 0.9 * len(columns)
    fig = new_figure(size + 1.5, size)
    ax = fig.add_subplot()
    image = ax.imshow(np.nan_to_num(share), vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    for i in range(len(names)):
        for j in range(len(columns)):
            value = share[i, j]
            ax.text(j, i, "" if np.isnan(value) else f"{value:.2f}\n{counts[i, j]}",
                    ha="center", va="center", fontsize=7,
                    color="white" if value > 0.6 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    return save_figure(fig, path)
