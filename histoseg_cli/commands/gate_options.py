"""Options of the commands that run the gated segmenter (predict, export), declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

GATE = "Gate"

Classifier = Annotated[Path | None, typer.Option(
    "--classifier", help="train-cls run directory or checkpoint: the stage-1 classifier as "
    "gate \\[default: the segmenter's gate head if it has one].", rich_help_panel=GATE,
    show_default=False)]
GateThreshold = Annotated[float, typer.Option(
    "--gate-threshold", help="Classes with gate probability <= this are masked out of a "
    "window.", rich_help_panel=GATE)]
NoGate = Annotated[bool, typer.Option(
    "--no-gate", help="Do not apply the gate (its probabilities are still kept).",
    rich_help_panel=GATE)]
