"""The ``histoseg`` app: the command group (usage errors click finds as one line), ``--version``,
and the command modules in pipeline order (each registers itself on ``app`` through
``commands.runner.command``)."""

from __future__ import annotations

import importlib
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from typer import rich_utils
from typer.core import TyperGroup

from histoseg_cli import __version__

stderr = Console(stderr=True)


def _is(err: BaseException, name: str) -> bool:
    """Whether ``err`` is click's exception ``name`` (Typer may vendor its own click, so
    classes are matched by name)."""
    return any(cls.__name__ == name for cls in type(err).__mro__)


class OneLineUsageErrors(TyperGroup):
    """The ``histoseg`` group: a usage error that click itself finds (an option value out of
    range, an unknown option, a missing argument) is one line on stderr and exit 2, like the
    errors the commands raise, instead of click's usage box."""

    def main(self, args: Any = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args=args, prog_name=prog_name, complete_var=complete_var,
                                standalone_mode=False, **extra)
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var,
                              standalone_mode=False, **extra)
        except typer.Abort:
            stderr.print("[bold red]aborted[/]")
            sys.exit(1)
        except Exception as err:  # noqa: BLE001 - click's exceptions, matched by name
            if not _is(err, "ClickException"):
                raise
            if _is(err, "UsageError") and not _is(err, "NoArgsIsHelpError"):
                ctx = getattr(err, "ctx", None)
                where = f" (see {ctx.command_path} -h)" if ctx is not None else ""
                stderr.print(f"[bold red]error:[/] {err.format_message()}{where}",
                             highlight=False, soft_wrap=True, markup=True)
            else:  # a bare command's help, and click's other errors, as Typer shows them
                rich_utils.rich_format_error(err)
            sys.exit(err.exit_code)
        sys.exit(rv if isinstance(rv, int) else 0)


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
