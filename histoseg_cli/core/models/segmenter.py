"""The stage-3 segmenter: DeepLabV3+ from segmentation-models-pytorch, with an optional gate
head (smp's classification head on the encoder), and its checkpoint record.

ASPP rates 6/12/18 at output stride 16 are the reference network's (smp's default 12/24/36 is
the output-stride-8 setting); the checkpoint records both. Encoders are built without weights:
ImageNet weights are fetched only by :func:`load_encoder_weights` when the user asks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from histoseg_cli.core.errors import HistosegError, InputError
from histoseg_cli.core.models.checkpoint import LoadedModel, ModelInfo, load_model, register_task

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
        self.net = smp.DeepLabV3Plus(encoder_name=encoder, encoder_weights=None,
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


def load_encoder_weights(model: Segmenter, spec: str) -> None:
    """``spec`` = "imagenet" (smp's weights, downloaded now) or a state-dict file for the
    encoder (or a whole histoseg/segmenter state dict); one clear error offline."""
    if spec == "imagenet":
        import segmentation_models_pytorch as smp

        try:
            donor = smp.DeepLabV3Plus(encoder_name=model.encoder_name,
                                      encoder_weights="imagenet",
                                      encoder_output_stride=model.output_stride)
        except Exception as err:  # noqa: BLE001 - network and hub errors vary
            raise HistosegError(f"--pretrained imagenet: could not fetch ImageNet weights for "
                                f"{model.encoder_name} ({type(err).__name__}); check the "
                                "network or pass --pretrained PATH to a local state dict"
                                ) from None
        model.encoder.load_state_dict(donor.encoder.state_dict())
        log.info("loaded ImageNet weights into the %s encoder", model.encoder_name)
        return
    path = Path(spec)
    if not path.is_file():
        raise InputError(path, "no such file (expected an encoder state dict or 'imagenet')")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not weights"
        raise InputError(path, f"not a PyTorch state dict ({type(err).__name__})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise InputError(path, "not a state dict (expected a mapping of names to tensors)")
    for prefix in ("net.encoder.", "encoder.", ""):
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if sub and set(sub) >= {k for k in model.encoder.state_dict()
                                if not k.endswith("num_batches_tracked")}:
            model.encoder.load_state_dict(sub, strict=False)
            log.info("loaded encoder weights from %s", path)
            return
    raise InputError(path, f"holds no complete weights for the {model.encoder_name} encoder")
