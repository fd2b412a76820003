"""``histoseg eval``: predicted label maps against ground truth -> IoU, mIoU, FwIoU, ACC."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from histoseg_cli.app import app
from histoseg_cli.commands.runner import Output, command, stderr


@command(app, "eval", panel="Pipeline")
def evaluate(
    pred: Annotated[Path, typer.Argument(help="Predictions artifact (.h5 from histoseg "
                                         "predict), folder of them, or folder of label PNGs.",
                                         show_default=False)],
    truth: Annotated[Path, typer.Argument(help="Patches artifact with masks, folder of them "
                                          "(matched to PRED's by path under the folder), or "
                                          "folder of label PNGs (palette or greyscale) matched "
                                          "to PRED by file stem.", show_default=False)],
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Metrics JSON to write; the confusion-matrix PNG "
        "(NAME.confusion.png) and per-image CSV (NAME.per-image.csv) go beside it.",
        show_default=False)] = None,
    classes: Annotated[str | None, typer.Option(
        "--classes", help="Comma-separated class names in label order, when neither side "
        "records them \\[default: the recorded names].", show_default=False)] = None,
    only_predicted: Annotated[bool, typer.Option(
        "--only-predicted", help="Score only the ground-truth maps that have a prediction "
        "(a subset's predictions against a whole mask folder; the JSON counts the others as "
        "unpredicted). Default: a missing prediction is an error.")] = False,
    *,
    out: Output,
) -> None:
    """Score predictions against ground truth: one confusion matrix pooled over all pixels.

    Ground-truth labels >= the number of classes (background, ignore) are left out. Prints the
    written paths, or the metrics as JSON (keys miou, fwiou, accuracy, iou, pixels) with
    --json or when nothing is written.

    [b]Examples[/b]

      histoseg eval pred.h5 test.h5 --json

      histoseg eval labels/ masks/ -o metrics.json   (+ metrics.confusion.png, metrics.per-image.csv)

      histoseg eval labels/ masks/ --only-predicted --json   (labels/ holds a subset)

      histoseg eval preds/ tiles/ --json   (predict's folder of artifacts against its input)
    """
    from histoseg_cli.core.atomic import check_writable
    from histoseg_cli.core.metrics.evaluate import (EvalRequest, run_eval, scores_table,
                                                    write_reports)

    names = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    if output is not None:
        check_writable(output)
    result = run_eval(EvalRequest(pred, truth, names, only_predicted), out.reporter)
    if out.reporter.enabled:
        stderr.print(scores_table(result.scores, f"eval ({len(result.per_image)} images)"))
    paths = write_reports(result, output) if output is not None else {}
    if output is None and not out.json:
        out.json = True  # nothing written: the metrics are the result
    out.result(result.as_dict(), paths=[str(p) for p in paths.values()])
