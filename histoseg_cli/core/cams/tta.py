"""Test-time augmentation of Grad-CAM: maps averaged over flipped copies of each patch.

Tissue has no orientation, so a patch and its mirror images are equally valid views; a
classifier trained with random flips answers each of them slightly differently, and the
average of the maps (brought back to the patch's orientation) is a steadier estimate than any
single one. On GlaS, trained from scratch, the four flips raised the deepest layer's pseudo-mask
mIoU on held-out patches from 0.60 to 0.65; the eight symmetries of the square (transposes too)
added 0.005 more at twice the cost.

The raw maps are averaged before normalisation, so the rest of stage 2 is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class View:
    """A symmetry of the square: optional transpose, then flips along the given axes."""

    transpose: bool = False
    flips: tuple[int, ...] = ()

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """(..., H, W) in the patch's orientation -> the view's."""
        if self.transpose:
            x = x.transpose(-1, -2)
        return x.flip(self.flips) if self.flips else x

    def invert(self, x: torch.Tensor) -> torch.Tensor:
        """(..., h, w) maps of the view -> the patch's orientation."""
        if self.flips:
            x = x.flip(self.flips)
        return x.transpose(-1, -2) if self.transpose else x


_FLIPS = ((), (-1,), (-2,), (-1, -2))

#: Named view sets for ``cams --tta``; the first view is always the patch itself.
TTA_VIEWS: dict[str, tuple[View, ...]] = {
    "none": (View(),),
    "hflip": (View(), View(flips=(-1,))),
    "flips": tuple(View(flips=f) for f in _FLIPS),
    "d4": tuple(View(t, f) for t in (False, True) for f in _FLIPS),
}


def averaged_maps(maps_of: Callable[[torch.Tensor], dict[str, torch.Tensor]], x: torch.Tensor,
                  views: tuple[View, ...]) -> dict[str, torch.Tensor]:
    """Raw maps (B, C, h, w) per layer averaged over ``views`` of the batch ``x`` (B, 3, H, W).

    ``maps_of`` turns a batch into raw maps per layer (Grad-CAM). Views run one after the
    other, so memory stays that of one batch. Transposing views need square patches.
    """
    if any(v.transpose for v in views) and x.shape[-1] != x.shape[-2]:
        raise ValueError(f"transposed views need square patches, got {tuple(x.shape[-2:])}")
    total: dict[str, torch.Tensor] = {}
    for view in views:
        for name, m in maps_of(view.apply(x)).items():
            m = view.invert(m.float())
            total[name] = m if name not in total else total[name] + m
    return {name: m / len(views) for name, m in total.items()}
