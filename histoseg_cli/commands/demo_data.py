"""``histoseg demo-data``: a synthetic dataset so the pipeline runs with no download."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from histoseg_cli.app import app
from histoseg_cli.commands.runner import Output, command


@command(app, "demo-data", panel="Data")
def demo_data(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write (LUAD-HistoSeg layout).",
                                            show_default=False)],
    patch_size: Annotated[int, typer.Option("--patch-size", min=32, help="Patch side.")] = 96,
    train: Annotated[int, typer.Option("--train", min=1, help="Training patches.")] = 240,
    val: Annotated[int, typer.Option("--val", min=1, help="Validation patches.")] = 40,
    test: Annotated[int, typer.Option("--test", min=1, help="Test patches.")] = 40,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    *,
    out: Output,
) -> None:
    """Write a small SYNTHETIC H&E-like dataset (4 classes, LUAD-HistoSeg layout).

    The textures only imitate tissue; use it to try the pipeline, not to judge a model.

    [b]Example[/b]:  histoseg demo-data demo && histoseg tile demo --dataset luad -o demo-h5/
    """
    from histoseg_cli.core.atomic import check_writable
    from histoseg_cli.core.data.demo import DemoConfig, write_demo_dataset  # numpy, scipy

    config = DemoConfig(patch_size=patch_size, train=train, val=val, test=test, seed=seed)
    check_writable(out_dir, folder=True)
    counts = write_demo_dataset(out_dir, config, out.reporter)
    out.result({"output": str(out_dir), "synthetic": True, **counts})
