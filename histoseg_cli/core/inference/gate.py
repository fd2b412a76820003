"""Classification-gated segmentation: one module from uint8-range pixels to gated probabilities.

The gate is the method's inference rule: a class whose patch-level probability (from the
stage-1 classifier, or from the segmenter's own gate head) is at or below a threshold cannot be
predicted anywhere in that patch. Classes are masked out of the softmax (their logits set to
-inf), never multiplied by zero, and a patch whose every class is gated off falls back to the
ungated prediction. Gated probabilities are what overlapping windows average, so blending and
gating commute with the per-patch argmax. The same module is what ``export`` traces.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from histoseg_cli.core.defaults import GATE_THRESHOLD
from histoseg_cli.core.errors import UsageError
from histoseg_cli.core.models.checkpoint import LoadedModel
from histoseg_cli.core.models.preprocess import InputNorm

#: Where the gate comes from: the stage-1 classifier, the segmenter's gate head, or nowhere.
GATE_SOURCES = ("classifier", "head", "none")


def gated_softmax(logits: torch.Tensor, gate: torch.Tensor | None,
                  threshold: float | None) -> torch.Tensor:
    """Class probabilities (B, C, H, W) from ``logits`` with classes whose gate probability
    (B, C) is <= ``threshold`` excluded; rows with every class off keep all classes.
    ``gate`` or ``threshold`` None: the plain softmax."""
    if gate is None or threshold is None:
        return logits.float().softmax(dim=1)
    on = gate > threshold
    on = on | ~on.any(dim=1, keepdim=True)
    masked = logits.float().masked_fill(~on[:, :, None, None], float("-inf"))
    return masked.softmax(dim=1)


@dataclass(frozen=True)
class GateConfig:
    """How predictions are gated: ``enabled=False`` keeps the gate's probabilities (they are
    still recorded) but does not apply them (the ablation)."""

    threshold: float = GATE_THRESHOLD
    enabled: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold < 1.0:
            raise UsageError("must be in [0, 1)", setting="gate_threshold")


class GatedSegmenter(nn.Module):
    """Segmenter + gate: float (B, 3, H, W) pixels in [0, 255] -> ``{"probs": (B, C, H, W)
    gated class probabilities, "gate": (B, C) gate probabilities}`` (no "gate" without one).

    Each network gets the input normalisation it was trained with, so a ResNet-38 classifier
    (inputs in [0, 1]) and an ImageNet-normalised DeepLabV3+ share one uint8 batch.
    """

    def __init__(self, segmenter: nn.Module, segmenter_norm: InputNorm,
                 classifier: nn.Module | None = None, classifier_norm: InputNorm | None = None,
                 source: str = "none", config: GateConfig = GateConfig()) -> None:
        super().__init__()
        if source not in GATE_SOURCES:
            raise ValueError(f"gate source must be one of {GATE_SOURCES}, got {source!r}")
        if (source == "classifier") != (classifier is not None):
            raise ValueError("a classifier is given exactly when the gate source is 'classifier'")
        self.segmenter = segmenter
        self.classifier = classifier
        self.segmenter_norm = segmenter_norm
        self.classifier_norm = classifier_norm or InputNorm()
        self.source = source
        self.config = config
        self.eval()  # an inference module; train() would turn on dropout and batch statistics

    @property
    def threshold(self) -> float | None:
        """The threshold applied, or None (no gate, or ``--no-gate``)."""
        return self.config.threshold if self.config.enabled and self.source != "none" else None

    @property
    def dtype(self) -> torch.dtype:
        """The networks' parameter dtype (float16 in an fp16 export); inputs are cast to it
        after normalisation, and the gating runs in float32."""
        first = next(self.segmenter.parameters(), None)
        return torch.float32 if first is None else first.dtype

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        dtype = self.dtype
        out = self.segmenter(self.segmenter_norm(pixels).to(dtype))
        logits = out["masks"] if isinstance(out, dict) else out
        gate = None
        if self.source == "classifier":
            gate = self.classifier(self.classifier_norm(pixels).to(dtype)).float().sigmoid()
        elif self.source == "head":
            gate = out["gate"].float().sigmoid()
        result = {"probs": gated_softmax(logits, gate, self.threshold)}
        if gate is not None:
            result["gate"] = gate
        return result


def choose_gate_source(segmenter: LoadedModel, classifier: LoadedModel | None) -> str:
    """The stage-1 classifier when given, else the segmenter's gate head, else none."""
    if classifier is not None:
        return "classifier"
    return "head" if getattr(segmenter.info, "gate_head", False) else "none"


def build_gated(segmenter: LoadedModel, classifier: LoadedModel | None,
                config: GateConfig = GateConfig()) -> GatedSegmenter:
    """The gated module of a loaded segmenter and optional classifier (eval mode)."""
    source = choose_gate_source(segmenter, classifier)
    model = GatedSegmenter(segmenter.model, segmenter.input_norm,
                           classifier.model if classifier is not None else None,
                           classifier.input_norm if classifier is not None else None,
                           source, config)
    return model.eval()
