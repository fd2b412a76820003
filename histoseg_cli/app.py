"""The ``histoseg`` app: the command group, ``--version``, and the command modules in pipeline
order (each registers itself through ``commands.runner.command``)."""

from __future__ import annotations

import importlib
from typing import Annotated

import typer

from histoseg_cli import __version__
from histoseg_cli.commands.runner import OneLineUsageErrors

#: Command modules, in the order of the pipeline; each registers itself on ``app``.
COMMAND_MODULES = (
    "histoseg_cli.commands.demo_data",
    "histoseg_cli.commands.tile",
    "histoseg_cli.commands.train_cls",
    "histoseg_cli.commands.cams",
    "histoseg_cli.commands.train_seg",
    "histoseg_cli.commands.predict",
    "histoseg_cli.commands.eval",
    "histoseg_cli.commands.export",
)

app = typer.Typer(
    name="histoseg",
    cls=OneLineUsageErrors,
    help="Tissue semantic segmentation for histopathology from patch-level labels "
    "(multi-layer pseudo-supervision, Han et al. 2022).",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"histoseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    """Tissue semantic segmentation for histopathology from patch-level labels."""


for _module in COMMAND_MODULES:
    importlib.import_module(_module)


def main() -> None:
    """Console-script entry point."""
    app()
