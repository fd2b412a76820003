"""The deployable graph: uint8 NHWC patches in, gated per-pixel labels out.

Everything a deployment would otherwise re-implement runs inside it: the layout change and
cast, each network's own input normalisation, the gate (stage-1 classifier or the segmenter's
gate head), the masked softmax with its ungated fallback, and the argmax. Outputs: ``labels``
(B, P, P) uint8, ``probs`` (B, C, P, P) gated probabilities (what overlapping windows average)
and, with a gate, ``gate`` (B, C).
"""

from __future__ import annotations

import torch
from torch import nn

from histoseg_cli.core.inference.gate import GatedSegmenter

INPUT = "patches"


class FusedGatedSegmenter(nn.Module):
    """:class:`GatedSegmenter` behind a uint8 (B, P, P, 3) input and a uint8 label output."""

    def __init__(self, gated: GatedSegmenter) -> None:
        super().__init__()
        self.gated = gated
        self.eval()

    @property
    def output_names(self) -> list[str]:
        return ["labels", "probs"] + (["gate"] if self.gated.source != "none" else [])

    def forward(self, patches: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pixels = patches.permute(0, 3, 1, 2).float()
        out = self.gated(pixels)
        labels = out["probs"].argmax(dim=1).to(torch.uint8)
        return (labels, out["probs"]) + ((out["gate"],) if "gate" in out else ())
