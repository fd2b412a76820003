"""Options several commands share, declared once: one flag, one help text, one default (the
core's, from ``core.defaults``), so ``histoseg X --help`` reads the same for the same option in
every command. Commands compose these; options only one command has stay in its module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from histoseg_cli.core.defaults import (DEVICE_CHOICES, GATE_THRESHOLD, MAGNIFICATION,
                                        MAX_READERS, MIN_TISSUE, PRECISIONS, THUMBNAIL_SIZE)

OPTIM, HARDWARE, OUTPUT, GATE, SLIDES, RUN = ("Optimisation", "Hardware", "Output", "Gate",
                                              "Slides", "Run")

# -- where and how networks run ------------------------------------------------------------
Device = Annotated[str, typer.Option(
    "--device", help=f"{', '.join(DEVICE_CHOICES)} or cuda:N (auto: CUDA when present).",
    rich_help_panel=HARDWARE)]
Precision = Annotated[str, typer.Option(
    "--precision", help=f"{' | '.join(PRECISIONS)}: bf16 autocast or fp32 (auto: bf16 on CUDA, "
    "fp32 on CPU; bf16 is 2-4x fp32 on CPUs with bf16 units).", rich_help_panel=HARDWARE)]
Compile = Annotated[bool, typer.Option("--compile", help="torch.compile the networks.",
                                       rich_help_panel=HARDWARE)]
Seed = Annotated[int, typer.Option("--seed", help="Random seed (same seed, same result).")]

# -- training ------------------------------------------------------------------------------
BatchSize = Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Global batch (split "
                                        "over torchrun processes).", rich_help_panel=OPTIM)]
WeightDecay = Annotated[float, typer.Option("--weight-decay", min=0.0, rich_help_panel=OPTIM)]
Momentum = Annotated[float, typer.Option("--momentum", min=0.0, max=1.0, rich_help_panel=OPTIM)]
PolyPower = Annotated[float, typer.Option("--poly-power", min=0.0, help="Poly LR decay power "
                                          "(per iteration).", rich_help_panel=OPTIM)]
Deterministic = Annotated[bool, typer.Option("--deterministic", help="Deterministic kernels "
                                             "(slower on GPU).", rich_help_panel=OPTIM)]
LoaderWorkers = Annotated[int, typer.Option("--workers", "-j", min=0, help="Data-loading "
                                            "processes (0: in the main process).",
                                            rich_help_panel=HARDWARE)]
ChannelsLast = Annotated[bool | None, typer.Option(
    "--channels-last/--no-channels-last", help="channels_last memory format \\[default: on "
    "CUDA; on CPU with --precision bf16 or a backbone/encoder with depthwise convolutions "
    "(EfficientNet, MobileNet)].", show_default=False, rich_help_panel=HARDWARE)]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the run in RUN_DIR (schedules, "
                                      "data order, best score).", rich_help_panel=OUTPUT)]
OverwriteRun = Annotated[bool, typer.Option("--overwrite", help="Replace a run in RUN_DIR "
                                            "(default: refuse; --resume continues it).",
                                            rich_help_panel=OUTPUT)]
Overwrite = Annotated[bool, typer.Option(
    "--overwrite", help="Replace outputs that exist (default: keep those made the same way, "
    "refuse those made by another model or other settings).", rich_help_panel=OUTPUT)]

# -- the gate (predict, export) ------------------------------------------------------------
Classifier = Annotated[Path | None, typer.Option(
    "--classifier", help="train-cls run directory or checkpoint: the stage-1 classifier as "
    "gate \\[default: the segmenter's gate head if it has one].", rich_help_panel=GATE,
    show_default=False)]
GateThreshold = Annotated[float, typer.Option(
    "--gate-threshold", min=0.0, max=1.0, help="Classes with gate probability <= this are "
    "masked out of a window.", rich_help_panel=GATE)]
NoGate = Annotated[bool, typer.Option(
    "--no-gate", help="Do not apply the gate (its probabilities are still kept).",
    rich_help_panel=GATE)]
DEFAULT_GATE_THRESHOLD = GATE_THRESHOLD

# -- slides (tile, predict) ----------------------------------------------------------------
Mpp = Annotated[float | None, typer.Option(
    "--mpp", min=0.01, help="Resolution in um/px (instead of --magnification) \\[default: "
    f"tile {MAGNIFICATION:g}x; predict the segmenter's].",
    rich_help_panel=SLIDES, show_default=False)]
Magnification = Annotated[float | None, typer.Option(
    "--magnification", min=0.1, help="Magnification (instead of --mpp; 10x = 1.0 um/px).",
    rich_help_panel=SLIDES, show_default=False)]
SourceMpp = Annotated[float | None, typer.Option(
    "--source-mpp", min=0.01, help="Level-0 um/px of the slides that record no resolution "
    "(the others keep theirs).", rich_help_panel=SLIDES, show_default=False)]
ForceSourceMpp = Annotated[bool, typer.Option(
    "--force-source-mpp", help="Use --source-mpp for every slide, also those that record a "
    "resolution (a wrong one, e.g. a TIFF saved at 72 dpi).", rich_help_panel=SLIDES)]
MinTissue = Annotated[float | None, typer.Option(
    "--min-tissue", min=0.0, max=1.0, help="Use tiles with at least this tissue fraction "
    f"\\[default: {MIN_TISSUE}].", rich_help_panel=SLIDES, show_default=False)]
ThumbnailSize = Annotated[int | None, typer.Option(
    "--thumbnail-size", min=64, help="Longer side of the thumbnail tissue is detected on "
    f"\\[default: {THUMBNAIL_SIZE}].", rich_help_panel=SLIDES, show_default=False)]
ReaderWorkers = Annotated[int | None, typer.Option(
    "--workers", "-j", min=1, help="Slide-reading processes, one slide handle each "
    f"\\[default: the CPUs, at most {MAX_READERS}].", rich_help_panel=SLIDES,
    show_default=False)]
