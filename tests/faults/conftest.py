"""The tiny pipeline the fault modules run on, built once per session (it takes seconds of
real training, and the modules only read it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import build_pipeline


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("tifffile")
    return build_pipeline(tmp_path_factory.mktemp("pipeline"))
