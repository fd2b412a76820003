"""Options every training command shares (the one training loop's), declared once."""

from __future__ import annotations

from typing import Annotated

import typer

OPTIM, HARDWARE, OUTPUT = "Optimisation", "Hardware", "Output"

BatchSize = Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Global batch (split "
                                        "over torchrun processes).", rich_help_panel=OPTIM)]
WeightDecay = Annotated[float, typer.Option("--weight-decay", min=0.0, rich_help_panel=OPTIM)]
Momentum = Annotated[float, typer.Option("--momentum", min=0.0, max=1.0, rich_help_panel=OPTIM)]
PolyPower = Annotated[float, typer.Option("--poly-power", min=0.0, help="Poly LR decay power "
                                          "(per iteration).", rich_help_panel=OPTIM)]
Seed = Annotated[int, typer.Option("--seed", rich_help_panel=OPTIM)]
Deterministic = Annotated[bool, typer.Option("--deterministic", help="Deterministic kernels "
                                             "(slower on GPU).", rich_help_panel=OPTIM)]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.",
                                     rich_help_panel=HARDWARE)]
Workers = Annotated[int, typer.Option("--workers", "-j", min=0, help="Data-loading processes.",
                                      rich_help_panel=HARDWARE)]
Precision = Annotated[str, typer.Option("--precision", help="auto (bf16 on CUDA, fp32 on CPU), "
                                        "fp32 or bf16.", rich_help_panel=HARDWARE)]
ChannelsLast = Annotated[bool | None, typer.Option(
    "--channels-last/--no-channels-last", help="channels_last memory format \\[default: on "
    "CUDA, and on CPU with --precision bf16].", show_default=False, rich_help_panel=HARDWARE)]
Compile = Annotated[bool, typer.Option("--compile", help="torch.compile the network.",
                                       rich_help_panel=HARDWARE)]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the run in RUN_DIR (schedules, "
                                      "data order, best score).", rich_help_panel=OUTPUT)]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace a run in RUN_DIR.",
                                         rich_help_panel=OUTPUT)]
