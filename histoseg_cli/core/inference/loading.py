"""Loading a gated segmenter from checkpoints: what ``predict`` runs and ``export`` traces.

The segmenter (a train-seg checkpoint or run directory) and optionally the stage-1 classifier
(train-cls) are loaded, checked to speak about the same classes, wrapped with the gate, and
described by a :class:`ModelCard`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from histoseg_cli.core.data.format import default_palette
from histoseg_cli.core.errors import InputError
from histoseg_cli.core.inference.card import ModelCard
from histoseg_cli.core.inference.gate import GateConfig, GatedSegmenter, build_gated
from histoseg_cli.core.models.checkpoint import LoadedModel, load_model

log = logging.getLogger("histoseg")


def load_gated(segmenter: Path, classifier: Path | None, device: torch.device,
               gate: GateConfig = GateConfig(), precision: str = "fp32"
               ) -> tuple[GatedSegmenter, ModelCard]:
    """The gated segmenter of the checkpoints (eval mode, on ``device``) and its card."""
    seg = load_model(segmenter, device=device, task="segmenter")
    cls_model = None
    if classifier is not None:
        cls_model = load_model(classifier, device=device, task="classifier")
        _check_pair(seg, cls_model)
    gated = build_gated(seg, cls_model, gate)
    return gated, card_of(seg, cls_model, gated, precision)


def card_of(segmenter: LoadedModel, classifier: LoadedModel | None, gated: GatedSegmenter,
            precision: str) -> ModelCard:
    """The card of a gated segmenter built from checkpoints."""
    info = segmenter.info
    palette = info.palette
    if palette is None or len(palette) < info.num_classes + 1:
        palette = default_palette(info.num_classes).tolist()
    norms = {"segmenter": segmenter.input_norm.to_spec()}
    if classifier is not None:
        norms["classifier"] = classifier.input_norm.to_spec()
    return ModelCard(
        class_names=list(info.class_names), palette=[list(map(int, row)) for row in palette],
        patch_size=int(info.patch_size), mpp=info.mpp, gate=gated.source,
        gate_threshold=gated.threshold, normalisation=norms,
        sources={"segmenter": str(segmenter.path),
                 "classifier": None if classifier is None else str(classifier.path),
                 "training_data": (info.data.get("train") or {}).get("path")
                 or info.config.get("data"),
                 "training_names_sha256": (info.data.get("train") or {}).get("names_sha256")},
        precision=precision)


def _check_pair(segmenter: LoadedModel, classifier: LoadedModel) -> None:
    """The gate must speak about the segmenter's classes, in the same order."""
    if list(classifier.info.class_names) != list(segmenter.info.class_names):
        raise InputError(classifier.path, f"classifier classes {classifier.info.class_names} "
                         f"differ from the segmenter's {segmenter.info.class_names} (expected "
                         "the stage-1 classifier of the same dataset)")
    a, b = classifier.info.mpp, segmenter.info.mpp
    if a and b and abs(a - b) / b > 0.05:
        log.warning("the classifier was trained at %.3g um/px and the segmenter at %.3g um/px;"
                    " the gate sees the segmenter's windows", a, b)
