"""The contract every backbone follows, its registry, and the patch classifier on top.

A backbone returns the activations of three named layers, the last of which is the final
feature map: the classifier pools that one, and multi-layer Grad-CAM reads all three (b4_5,
b5_2, bn7 for ResNet-38; the last three stages elsewhere). Backbones are registered by name so
commands and checkpoints refer to them by string, never through if-chains.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class BackboneEntry:
    """A registered backbone: its factory and the output strides it can be built at."""

    factory: Callable[..., Backbone]
    strides: tuple[int, ...]

    def stride_error(self, name: str, output_stride: int) -> str | None:
        """Why ``output_stride`` cannot be built, or None when it can."""
        if output_stride in self.strides:
            return None
        *others, last = map(str, self.strides)
        choices = f"{', '.join(others)} or {last}" if others else last
        return f"{name} has output stride {choices} only, not {output_stride}"


BACKBONES: dict[str, BackboneEntry] = {}


def register_backbone(name: str, *, strides: tuple[int, ...]
                      ) -> Callable[[Callable[..., Backbone]], Callable[..., Backbone]]:
    """Decorator: make a backbone factory available as ``name``. The factory takes an
    ``output_stride`` keyword, one of ``strides`` (required: only the backbone knows which it
    can be built at; checked here and by the training config before anything is built);
    checkpoints record the stride they were built with."""

    def add(factory: Callable[..., Backbone]) -> Callable[..., Backbone]:
        BACKBONES[name] = BackboneEntry(factory, strides)
        return factory

    return add


def build_backbone(name: str, **kwargs: Any) -> Backbone:
    """Instantiate a registered backbone (``ValueError`` listing the choices, or naming the
    strides it supports, otherwise)."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone '{name}'; choose one of {', '.join(sorted(BACKBONES))}")
    entry = BACKBONES[name]
    if "output_stride" in kwargs and (why := entry.stride_error(name, kwargs["output_stride"])):
        raise ValueError(why)
    return entry.factory(**kwargs)


def has_depthwise_convolutions(model: nn.Module) -> bool:
    """Whether ``model`` holds depthwise convolutions (EfficientNet, MobileNet): on a CPU
    they train faster in channels_last even in fp32, unlike large dense ResNets."""
    return any(isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels
               for m in model.modules())


class Backbone(nn.Module):
    """Feature extractor exposing three layers for Grad-CAM; the last is the final features.

    Besides the layers, a backbone says how its inputs are normalised (``normalisation``: a
    spec for :class:`~histoseg_cli.core.models.preprocess.InputNorm`) and which early modules
    stay fixed when fine-tuning pretrained weights (``stem_modules``, frozen together with every
    BatchNorm by :meth:`freeze_pretrained`, as the reference does).
    """

    #: names of the three Grad-CAM layers, shallow to deep; the last is the pooled feature map
    cam_layers: tuple[str, str, str]
    #: channels of each entry of ``cam_layers``
    layer_channels: tuple[int, int, int]
    #: input normalisation: "scale01" or {"mean": [...], "std": [...]} (on [0, 1] inputs)
    normalisation: str | dict[str, list[float]] = "scale01"
    #: attribute names of the modules frozen when starting from pretrained weights
    stem_modules: tuple[str, ...] = ()
    #: spatial size of the final features is the input size divided by this
    output_stride: int = 8
    #: whether the reference's MXNet ``.params`` weights fit this network
    mxnet_weights: bool = False

    def __init__(self) -> None:
        super().__init__()
        self.bn_frozen = False

    @property
    def out_channels(self) -> int:
        return self.layer_channels[-1]

    def stem(self) -> list[nn.Module]:
        """The modules named by ``stem_modules``."""
        return [getattr(self, name) for name in self.stem_modules]

    def freeze_pretrained(self) -> None:
        """Fix the stem modules and every BatchNorm (statistics and affine parameters)."""
        for module in self.stem():
            for param in module.parameters():
                param.requires_grad_(False)
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                for param in module.parameters():
                    param.requires_grad_(False)
        self.bn_frozen = True
        self.train(self.training)

    def train(self, mode: bool = True) -> Backbone:
        """Like ``nn.Module.train``, but frozen BatchNorms keep using their running statistics."""
        super().train(mode)
        if self.bn_frozen:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


class PatchClassifier(nn.Module):
    """Backbone -> (PDA while training) -> Dropout2d -> global average pool -> 1x1 ``fc8``.

    ``fc8`` is a bias-free 1x1 convolution so the same weights give class activation maps.
    ``pda`` is any module taking ``(features, fc8_weight)`` and returning reweighted features;
    it runs only in training mode, as does dropout: the gate and Grad-CAM see the plain network.
    ``input_scale`` resizes every input by that factor first (bilinear), inside the network, so
    training, Grad-CAM, the gate and exports all see the patch at the scale the backbone was
    trained for (ImageNet features suit objects larger than a 20x gland in a 112 px patch).
    """

    def __init__(self, backbone: Backbone, num_classes: int, pda: nn.Module | None = None,
                 dropout: float = 0.5, input_scale: float = 1.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.input_scale = float(input_scale)
        self.pda = pda
        self.dropout = nn.Dropout2d(dropout)
        self.fc8 = nn.Conv2d(backbone.out_channels, num_classes, 1, bias=False)
        nn.init.xavier_uniform_(self.fc8.weight)

    @property
    def num_classes(self) -> int:
        return self.fc8.out_channels

    def forward_layers(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits (B, C) and the three Grad-CAM activations keyed by layer name."""
        if self.input_scale != 1.0:
            x = F.interpolate(x, scale_factor=self.input_scale, mode="bilinear",
                              align_corners=False)
        layers = self.backbone(x)
        features = layers[self.backbone.cam_layers[-1]]
        if self.training and self.pda is not None:
            features = self.pda(features, self.fc8.weight)
        features = self.dropout(features)
        pooled = features.mean(dim=(2, 3), keepdim=True)
        return self.fc8(pooled).flatten(1), layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_layers(x)[0]
