"""Background rules for pseudo masks: which pixels of a patch are glass, not tissue.

Per dataset (docs/method.md): LUAD-HistoSeg marks white pixels (grey > 200, minus white specks under
50 px) as background; BCSS-WSSS has none (white there is fat). numpy/scipy only, so the CLI can
list the rules without importing torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from histoseg_cli.core.defaults import WHITE_THRESHOLD
from histoseg_cli.core.morphology import drop_small_components

#: ITU-R BT.601 luma, as PIL's "L" conversion and OpenCV's RGB2GRAY use.
_LUMA = np.array([0.299, 0.587, 0.114])


@dataclass(frozen=True)
class BackgroundConfig:
    """Which pixels are glass: ``rule`` is a key of ``BACKGROUND_RULES``."""

    rule: str = "white"
    threshold: float = WHITE_THRESHOLD  # grey value above which a pixel is white
    min_size: int = 50  # white 4-connected components smaller than this stay tissue

    def as_dict(self) -> dict[str, object]:
        return {"rule": self.rule, "threshold": self.threshold, "min_size": self.min_size}


def white_background(images: np.ndarray, config: BackgroundConfig) -> np.ndarray:
    """(B, H, W) bool: grey > threshold, minus white 4-connected components < min_size px."""
    white = images.astype(np.float32) @ _LUMA.astype(np.float32) > config.threshold
    return np.stack([drop_small_components(mask, config.min_size) for mask in white])


def no_background(images: np.ndarray, config: BackgroundConfig) -> np.ndarray:
    """No background rule (e.g. BCSS-WSSS, where white is fat tissue)."""
    return np.zeros(images.shape[:3], dtype=bool)


BACKGROUND_RULES: dict[str, Callable[[np.ndarray, BackgroundConfig], np.ndarray]] = {
    "white": white_background,
    "none": no_background,
}


def background_mask(images: np.ndarray, config: BackgroundConfig) -> np.ndarray:
    """Apply the configured rule to (B, H, W, 3) uint8 patches."""
    return BACKGROUND_RULES[config.rule](images, config)
