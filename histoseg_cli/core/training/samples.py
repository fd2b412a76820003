"""Per-epoch sample figures of segmentation runs: image | reference mask | prediction."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_samples(path: Path, images: np.ndarray, truth: np.ndarray, pred: np.ndarray,
                  palette: np.ndarray, names: list[str]) -> Path:
    """One row per patch; class colours from ``palette`` (its last row for background)."""
    from histoseg_cli.core.figures import new_figure, save_figure  # matplotlib: only here

    n = len(pred)
    fig = new_figure(6, 2 * n)
    axes = fig.subplots(n, 3, squeeze=False)
    colours = np.asarray(palette, dtype=np.uint8)
    top = len(colours) - 1
    for i in range(n):
        for ax, panel, title in zip(axes[i], (images[i], colours[np.minimum(truth[i], top)],
                                              colours[np.minimum(pred[i], top)]),
                                    ("image", "reference", "prediction")):
            ax.imshow(panel)
            ax.set_axis_off()
            ax.set_title(f"{names[i]}: {title}" if title == "image" else title, fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path, dpi=80)
