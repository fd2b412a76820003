"""Shared fixtures: a CLI runner that keeps stdout and stderr apart, and the real data."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from histoseg_cli.app import app

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """../shared/data beside the project, or skip (a user's checkout will not have it)."""
    if not SHARED_DATA.is_dir():
        pytest.skip("real H&E data not found at ../shared/data")
    return SHARED_DATA.resolve()


class Cli:
    """Runs ``histoseg ARGS`` in-process; result has .exit_code, .stdout, .stderr."""

    def __init__(self) -> None:
        self.runner = CliRunner()

    def __call__(self, *args: object):  # noqa: ANN204 - click's Result
        return self.runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def cli() -> Cli:
    return Cli()
