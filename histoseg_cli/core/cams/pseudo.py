"""Raw class activation maps (Grad-CAM or Layer-CAM) -> normalised CAMs -> pseudo masks
(docs/method.md, stage 2).

Per patch and layer: bilinear upsampling to the patch size, min-max over the whole C x H x W
stack (not per class, as in the reference), zero maps for classes absent from the patch label,
an optional background channel, argmax. Background pixels get label C (ignored by train-seg).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: Score of the background channel where the rule marks background: just above any
#: normalised CAM (those are <= 1), so the rule wins there and nowhere else.
BACKGROUND_SCORE = 1.0 + 1e-5


def upsample(maps: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, size, size), bilinear."""
    return F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False)


def minmax_normalise(cams: torch.Tensor) -> torch.Tensor:
    """Scale each patch's whole (C, H, W) stack to [0, 1]; a constant stack becomes 0."""
    flat = cams.flatten(1)
    low = flat.min(dim=1).values[:, None, None, None]
    span = (flat.max(dim=1).values[:, None, None, None] - low)
    return torch.where(span > 0, (cams - low) / span.clamp_min(1e-12), torch.zeros_like(cams))


def label_masks(cams: torch.Tensor, present: torch.Tensor, background: torch.Tensor
                ) -> torch.Tensor:
    """Argmax over [C class maps, background channel] -> (B, H, W) uint8, background = C.

    Absent classes never win (their maps are 0, but a present class may be 0 too at the
    stack minimum; the reference would then pick the lowest index, absent or not). A patch
    with no class present is all background.
    """
    scores = cams.masked_fill(~present[:, :, None, None], -1.0)
    bg = background.to(cams.dtype)[:, None] * BACKGROUND_SCORE
    return torch.cat([scores, bg], dim=1).argmax(dim=1).to(torch.uint8)


@dataclass
class PseudoMasks:
    """Normalised CAMs (B, L, C, H, W) with absent classes zeroed, and masks (B, L, H, W)."""

    cams: torch.Tensor
    masks: torch.Tensor


def pseudo_masks(maps: dict[str, torch.Tensor], labels: torch.Tensor, background: torch.Tensor,
                 size: int) -> PseudoMasks:
    """Raw maps per layer + multi-hot ``labels`` (B, C) + background (B, H, W) -> masks."""
    present = labels.bool()
    cams, masks = [], []
    for raw in maps.values():
        cam = minmax_normalise(upsample(raw.float(), size)) * present[:, :, None, None]
        cams.append(cam)
        masks.append(label_masks(cam, present, background))
    return PseudoMasks(torch.stack(cams, dim=1), torch.stack(masks, dim=1))
