"""Batched augmentation on the device that moves masks with their images.

An image batch (B, 3, H, W) in [0, 255] and any number of targets go in; every target whose
last two axes are the image's (masks (B, H, W), pseudo masks (B, L, H, W)) gets exactly the
same flips, the others (patch labels) pass through. Colour jitter and blur touch the image
only. Per-sample decisions, drawn from torch's RNG on the device, so ``--resume`` reproduces
them once the loop reseeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torchvision.transforms.v2 import functional as TF


@dataclass(frozen=True)
class PairedAugment:
    """Random h/v flips (image and masks), colour jitter and Gaussian blur (image)."""

    hflip: bool = True
    vflip: bool = True
    color_jitter: float = 0.0  # brightness/contrast/saturation factors in 1 +- this
    blur: float = 0.0  # probability of a Gaussian blur per sample
    blur_sigma: tuple[float, float] = (0.1, 2.0)

    def __call__(self, x: torch.Tensor, targets: Sequence[torch.Tensor] = ()
                 ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        b = x.shape[0]
        out = list(targets)
        for enabled, dim in ((self.vflip, -2), (self.hflip, -1)):
            if not enabled:
                continue
            flip = torch.rand(b, device=x.device) < 0.5
            x = torch.where(flip.view(b, 1, 1, 1), x.flip(dim), x)
            out = [self._flip_mask(t, flip, dim, x.shape[-2:]) for t in out]
        if self.color_jitter > 0:
            x = self._jitter(x)
        if self.blur > 0:
            x = self._blur(x)
        return x, out

    @staticmethod
    def _flip_mask(t: torch.Tensor, flip: torch.Tensor, dim: int, size: torch.Size
                   ) -> torch.Tensor:
        if t.ndim < 3 or t.shape[-2:] != size:
            return t
        return torch.where(flip.view(-1, *[1] * (t.ndim - 1)), t.flip(dim), t)

    def _jitter(self, x: torch.Tensor) -> torch.Tensor:
        """Brightness, contrast and saturation factors in 1 +- strength, per sample."""
        b, s = x.shape[0], self.color_jitter

        def factor() -> torch.Tensor:
            return (1 + (torch.rand(b, 1, 1, 1, device=x.device) * 2 - 1) * s).to(x.dtype)

        x = x * factor()
        grey = TF.rgb_to_grayscale(x.clamp(0, 255))
        x = (x - grey.mean(dim=(1, 2, 3), keepdim=True)) * factor() + grey.mean(
            dim=(1, 2, 3), keepdim=True)
        grey = TF.rgb_to_grayscale(x.clamp(0, 255))
        x = (x - grey) * factor() + grey
        return x.clamp(0, 255)

    def _blur(self, x: torch.Tensor) -> torch.Tensor:
        """Blur a random subset of the batch with one sigma drawn per batch."""
        b = x.shape[0]
        pick = torch.rand(b, device=x.device) < self.blur
        low, high = self.blur_sigma
        sigma = float(low + (high - low) * torch.rand(()).item())
        kernel = 2 * int(round(2 * sigma)) + 1
        blurred = TF.gaussian_blur(x, [kernel, kernel], [sigma, sigma])
        return torch.where(pick.view(b, 1, 1, 1), blurred, x)
