"""A one-glance PNG of pseudo masks: image | CAM per layer | pseudo mask per layer | truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.patches import Patch

from histoseg_cli.core.figures import new_figure, save_figure


def cam_overlay(image: np.ndarray, cams: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Colour each pixel by its strongest class (palette), more opaque where that CAM is high."""
    strength = 0.85 * cams.max(axis=0)[..., None]  # keep some tissue visible
    colour = palette[cams.argmax(axis=0)].astype(np.float32)
    grey = image.astype(np.float32).mean(axis=-1, keepdims=True) * 0.6 + 60
    return (grey * (1 - strength) + colour * strength).clip(0, 255).astype(np.uint8)


def write_gallery(path: Path, images: np.ndarray, cams: np.ndarray, masks: np.ndarray,
                  names: list[str], labels: np.ndarray, layers: list[str],
                  class_names: list[str], palette: np.ndarray,
                  truth: np.ndarray | None = None) -> Path:
    """Rows of patches; ``cams`` (N, L, C, H, W) in [0, 1], ``masks`` (N, L, H, W)."""
    n, num_layers = masks.shape[:2]
    cols = 1 + 2 * num_layers + (truth is not None)
    fig = new_figure(1.9 * cols, 2.0 * n + 0.6)
    axes = fig.subplots(n, cols, squeeze=False)
    titles = (["image"] + [f"CAM {l}" for l in layers] + [f"mask {l}" for l in layers]
              + (["truth"] if truth is not None else []))
    for row in range(n):
        present = ",".join(c for c, on in zip(class_names, labels[row]) if on) or "none"
        panels = ([images[row]]
                  + [cam_overlay(images[row], cams[row, j], palette) for j in range(num_layers)]
                  + [palette[masks[row, j]] for j in range(num_layers)]
                  + ([palette[np.minimum(truth[row], len(palette) - 1)]]
                     if truth is not None else []))
        for col, panel in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(titles[col], fontsize=8)
        axes[row, 0].set_ylabel(f"{names[row][:22]}\n[{present}]", fontsize=6)
    handles = [Patch(facecolor=palette[k] / 255, edgecolor="black", linewidth=0.5, label=name)
               for k, name in enumerate([*class_names, "background"])]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7,
               frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return save_figure(fig, path, dpi=100)
