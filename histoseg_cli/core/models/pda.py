"""Progressive Dropout Attention (PDA) and its mu schedule (docs/method.md, stage 1).

PDA pushes the classifier to look beyond the most discriminative spots: each class activation
map is cut off above ``mu`` times its own maximum, and the mean of the clipped maps reweights the
features. ``mu`` shrinks epoch by epoch, so ever more of each peak is dropped.

Two forms (:data:`PDA_FORMS`). ``normalised`` (the default) divides the mean map by its
per-sample maximum, so the attention lies in [0, 1] and only redistributes weight; a sample
without any positive activation keeps its features. ``paper`` is the published formula: the
raw mean multiplies the features by the CAMs' own magnitude, and a sample whose CAMs are all
<= 0 gets all-zero features, zero logits and zero gradients, a state training never leaves.
Trained from scratch on GlaS, three runs (fp32 and bf16) of the paper's form had their loss
jump in the first PDA epoch (0.55 -> 0.89) and then stay at exactly ln 2; with pretrained
encoders the paper's form is offered for fidelity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class MuSchedule:
    """``mu`` per epoch: 1 (PDA off) during ``warmup_epochs``, then ``sigma`` times the
    previous value, never below ``floor``.

    Paper defaults. The reference code instead uses ``sigma=0.98`` and also decays during the
    warm-up (``decay_in_warmup=True``), so PDA starts at 0.98**3 = 0.941.
    """

    sigma: float = 0.985
    floor: float = 0.65
    warmup_epochs: int = 3
    decay_in_warmup: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.sigma <= 1:
            raise ValueError(f"PDA sigma must be in (0, 1], got {self.sigma}")
        if not 0 <= self.floor <= 1:
            raise ValueError(f"PDA floor must be in [0, 1], got {self.floor}")
        if self.warmup_epochs < 0:
            raise ValueError(f"PDA warm-up epochs must be >= 0, got {self.warmup_epochs}")

    def mu(self, epoch: int) -> float:
        """``mu`` for 0-based ``epoch`` (closed form, so a resumed run continues exactly)."""
        if epoch < self.warmup_epochs:
            return 1.0
        decays = epoch if self.decay_in_warmup else epoch - self.warmup_epochs + 1
        return max(self.floor, self.sigma ** decays)


def _normalised(attention: torch.Tensor) -> torch.Tensor:
    peak = attention.amax(dim=(2, 3), keepdim=True)
    return torch.where(peak > 0, attention / peak.clamp_min(1e-12), torch.ones_like(attention))


#: How the mean of the clipped maps becomes the attention: ``--pda`` names these.
PDA_FORMS = {"normalised": _normalised, "paper": lambda attention: attention}


class ProgressiveDropoutAttention(nn.Module):
    """Reweight features by the mean of the clipped class activation maps.

    Called with ``(features, fc8_weight)``: CAM_k = ReLU(fc8_k as a 1x1 conv) for every class;
    values above ``mu * max(CAM_k)`` (per sample) become 0; the mean over classes, divided by
    its per-sample maximum (1 where nothing is positive; ``form="paper"``: the raw mean),
    multiplies the features. Gradients flow through the attention. ``mu >= 1`` switches PDA
    off (warm-up).
    """

    def __init__(self, mu: float = 1.0, form: str = "normalised") -> None:
        super().__init__()
        if form not in PDA_FORMS:
            raise ValueError(f"PDA form must be one of {', '.join(PDA_FORMS)}, got {form!r}")
        self.mu = mu
        self.form = form

    @property
    def active(self) -> bool:
        return self.mu < 1.0

    def forward(self, features: torch.Tensor, fc8_weight: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return features
        cams = F.relu(F.conv2d(features, fc8_weight.to(features.dtype)))
        beta = self.mu * cams.amax(dim=(2, 3), keepdim=True)
        clipped = torch.where(cams > beta, torch.zeros_like(cams), cams)
        attention = PDA_FORMS[self.form](clipped.mean(dim=1, keepdim=True))
        return features * attention

    def extra_repr(self) -> str:
        return f"mu={self.mu:.4f}, form={self.form}"
