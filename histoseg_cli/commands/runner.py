"""How every command runs: common options, errors as one line, results on stdout, settings
named as flags.

Each command module defines a plain function and registers it with :func:`command`, which wraps
it so that ``HistosegError`` becomes one line on stderr and exit code 1 (2 for usage errors),
any other exception a one-line message too (traceback only with ``--verbose``), Ctrl-C and
SIGTERM a clean stop (exit 130 / 143), and progress and logs go to stderr at the level
``--quiet``/``--verbose`` ask for.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import sys
import traceback
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler

from histoseg_cli.core.errors import HistosegError, describe_os_error, render_settings
from histoseg_cli.core.interrupts import Terminated, stop_signals_as_interrupt
from histoseg_cli.core.progress import Reporter

Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logs and full tracebacks.",
                                       rich_help_panel="Output")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or info logs.",
                                     rich_help_panel="Output")]
Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.",
                                    rich_help_panel="Output")]

stderr = Console(stderr=True)


@dataclass
class Output:
    """How a command reports: result format on stdout, verbosity on stderr."""

    json: bool = False
    quiet: bool = False
    verbose: bool = False

    @property
    def reporter(self) -> Reporter:
        return Reporter(enabled=not self.quiet, console=stderr)

    def result(self, payload: dict[str, Any], paths: list[str] | None = None) -> None:
        """Print the command's result: JSON with ``--json``, else one path per line."""
        if self.json:
            sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
        else:
            for path in paths if paths is not None else [str(payload.get("output", ""))]:
                sys.stdout.write(f"{path}\n")
        sys.stdout.flush()


@functools.cache
def flag_table(fn: Callable[..., Any]) -> dict[str, str]:
    """How a user types each parameter of a command function: its long option
    (``--batch-size``) or an argument's metavar (``DATA``), read from its Typer declaration.
    Core messages name settings by field; a field is the parameter of the same name, so the
    declarations are the one table and renaming a flag there renames it in every message.
    Read when a message first needs it (not at start-up), once per command."""
    table = {}
    hints = typing.get_type_hints(fn, include_extras=True)  # also under postponed annotations
    for name in inspect.signature(fn).parameters:
        info = next((m for m in getattr(hints.get(name), "__metadata__", ())
                     if isinstance(m, (typer.models.OptionInfo, typer.models.ArgumentInfo))),
                    None)
        if isinstance(info, typer.models.ArgumentInfo):
            table[name] = info.metavar or name.upper()
        elif info is not None:  # in Annotated, Typer takes a first flag as the "default"
            first = (info.default,) if isinstance(info.default, str) else ()
            decls = [d.split("/")[0] for d in (*first, *(info.param_decls or ()))
                     if d.startswith("-")]
            longs = [d for d in decls if d.startswith("--")]
            table[name] = max(longs or decls or ["--" + name.replace("_", "-")], key=len)
    return table


class _FlagNames(logging.Filter):
    """Core log lines name settings as ``{field}``; show them as the flags users type."""

    def __init__(self, name_of: Callable[[str], str | None]) -> None:
        super().__init__()
        self.name_of = name_of

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()  # the braces may come in an argument (a failure line)
        if "{" in message:
            record.msg, record.args = render_settings(message, self.name_of), None
        return True


def _configure_logging(out: Output, name_of: Callable[[str], str | None]) -> None:
    level = logging.DEBUG if out.verbose else logging.WARNING if out.quiet else logging.INFO
    logger = logging.getLogger("histoseg")
    logger.handlers.clear()
    handler: logging.Handler
    if stderr.is_terminal:
        handler = RichHandler(console=stderr, show_path=False, show_time=False,
                              rich_tracebacks=False, markup=False)
    else:  # a log file or a pipe: one line per message, never wrapped at 80 columns
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)-8s %(message)s"))
    handler.addFilter(_FlagNames(name_of))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def command(app: typer.Typer, name: str, panel: str) -> Callable[[Callable[..., Any]], Any]:
    """Register ``fn`` as ``histoseg NAME``; it must accept ``out: Output`` as keyword.

    The wrapped function keeps ``fn``'s Typer parameters (``verbose``, ``quiet`` and ``json``
    are added here) and gets an ``Output`` built from them.
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        def name_of(setting: str) -> str | None:
            """This command's flag for a setting, else another command's (messages about
            what a different stage needs)."""
            others = (r.callback for r in app.registered_commands if r.callback is not None)
            for candidate in (fn, *others):
                if (flag := flag_table(candidate).get(setting)) is not None:
                    return flag
            return None

        @functools.wraps(fn)
        def wrapper(*args: Any, verbose: Verbose = False, quiet: Quiet = False,
                    json_: Json = False, **kwargs: Any) -> None:
            out = Output(json=json_, quiet=quiet, verbose=verbose)
            _configure_logging(out, name_of)
            try:
                with stop_signals_as_interrupt():
                    fn(*args, out=out, **kwargs)
            except HistosegError as err:
                if verbose:
                    traceback.print_exc(file=sys.stderr)
                stderr.print(f"[bold red]error:[/] {err.render(name_of)}", highlight=False,
                             soft_wrap=True)
                raise typer.Exit(err.exit_code) from None
            except Terminated as stop:
                if verbose:  # where it stopped
                    traceback.print_exc(file=sys.stderr)
                stderr.print(f"[bold red]{stop.describe()}[/]; rerun the command to resume or "
                             "redo it", highlight=False)
                raise typer.Exit(stop.exit_code) from None
            except KeyboardInterrupt:
                if verbose:
                    traceback.print_exc(file=sys.stderr)
                stderr.print("[bold red]interrupted[/]; rerun the command to resume or redo it")
                raise typer.Exit(130) from None
            except (typer.Exit, typer.Abort, SystemExit):
                raise
            except OSError as err:  # a place that cannot be written or read, in one line
                if verbose:
                    traceback.print_exc(file=sys.stderr)
                stderr.print(f"[bold red]error:[/] {describe_os_error(err)}", highlight=False,
                             soft_wrap=True)
                raise typer.Exit(1) from None
            except Exception as err:  # noqa: BLE001 - last line of defence for users
                if verbose:
                    traceback.print_exc(file=sys.stderr)
                stderr.print(f"[bold red]error:[/] {type(err).__name__}: {err}"
                             + ("" if verbose else " (run with --verbose for details)"),
                             highlight=False, soft_wrap=True)
                raise typer.Exit(1) from None

        _append_common_params(wrapper, fn)
        app.command(name, help=help_text(fn.__doc__), rich_help_panel=panel,
                    no_args_is_help=True)(wrapper)
        return fn

    return decorate


def help_text(doc: str | None) -> str:
    """A command's docstring as its ``--help``: each prose paragraph on one line, for the
    terminal to wrap (Typer keeps a docstring's line breaks, which wrap raggedly in a
    terminal narrower than the source), and paragraphs with indented lines (examples) as
    written."""
    paragraphs = inspect.cleandoc(doc or "").split("\n\n")
    return "\n\n".join(
        p if any(line.startswith(" ") for line in p.splitlines()) else " ".join(p.split("\n"))
        for p in paragraphs)


def _append_common_params(wrapper: Callable[..., Any], fn: Callable[..., Any]) -> None:
    """Give ``wrapper`` the signature of ``fn`` minus ``out`` plus the common options."""
    hints = typing.get_type_hints(fn, include_extras=True)
    sig = inspect.signature(fn)
    params = [p.replace(annotation=hints.get(p.name, p.annotation))
              for p in sig.parameters.values() if p.name != "out"]
    common = [
        inspect.Parameter("json_", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Json),
        inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Quiet),
        inspect.Parameter("verbose", inspect.Parameter.KEYWORD_ONLY, default=False,
                          annotation=Verbose),
    ]
    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params] + common
    wrapper.__signature__ = sig.replace(parameters=params,  # type: ignore[attr-defined]
                                        return_annotation=None)
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    del wrapper.__wrapped__  # type: ignore[attr-defined]
