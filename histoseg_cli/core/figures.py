"""Matplotlib figures without pyplot's global state, saved atomically.

``matplotlib.figure.Figure`` needs no backend switch and no ``plt.close``: the figure is an
ordinary object that goes away with its last reference.
"""

from __future__ import annotations

import io
from pathlib import Path

from matplotlib.figure import Figure

from histoseg_cli.core.atomic import write_bytes_atomic


def new_figure(width: float, height: float) -> Figure:
    """A figure of ``width`` x ``height`` inches."""
    return Figure(figsize=(width, height))


def save_figure(fig: Figure, path: Path, dpi: int = 100) -> Path:
    """Render ``fig`` to PNG at ``path`` (temporary file, then rename)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return write_bytes_atomic(path, buffer.getvalue())
