"""ImageNet encoders from timm, dilated to output stride 8 like ResNet-38.

For users who want a lighter network or easy ImageNet weights. The last three stages are the
Grad-CAM layers (``layer2``, ``layer3``, ``layer4`` for ResNets). Weights are never fetched at
construction: :func:`histoseg_cli.core.models.pretrained.load_pretrained` downloads them only
when the user asks for ``--pretrained imagenet``.
"""

from __future__ import annotations

from typing import Any

import timm
import torch

from histoseg_cli.core.models.base import Backbone, register_backbone
from histoseg_cli.core.models.preprocess import IMAGENET


class TimmBackbone(Backbone):
    """A timm ``features_only`` model exposing its last three stages."""

    def __init__(self, model_name: str, stem: tuple[str, ...], output_stride: int = 8) -> None:
        super().__init__()
        self.model_name = model_name  # the timm architecture
        self.encoder = timm.create_model(model_name, pretrained=False, features_only=True,
                                         out_indices=(-3, -2, -1), output_stride=output_stride)
        info = self.encoder.feature_info
        self.cam_layers = tuple(info.module_name())  # type: ignore[assignment]
        self.layer_channels = tuple(info.channels())  # type: ignore[assignment]
        self.output_stride = output_stride
        cfg = self.encoder.pretrained_cfg
        self.normalisation = {"mean": list(cfg.get("mean", IMAGENET["mean"])),
                              "std": list(cfg.get("std", IMAGENET["std"]))}
        self.stem_modules = stem

    def stem(self) -> list[torch.nn.Module]:
        """The encoder's stem and first stage (``stem_modules``, dotted names)."""
        return [self.encoder.get_submodule(name) for name in self.stem_modules]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(self.cam_layers, self.encoder(x)))


def _register(name: str, stem: tuple[str, ...], timm_name: str | None = None) -> None:
    @register_backbone(name)
    def factory(output_stride: int = 8, **kwargs: Any) -> TimmBackbone:
        return TimmBackbone(timm_name or name, stem, output_stride=output_stride, **kwargs)

    factory.__doc__ = f"timm {timm_name or name}, dilated to output stride 8 by default."


_RESNET_STEM = ("conv1", "bn1", "layer1")
for _name in ("resnet10t", "resnet18", "resnet34", "resnet50", "resnet101", "resnext50_32x4d"):
    _register(_name, _RESNET_STEM)

#: Short names users type, for the timm variant whose weights install from the package index
#: (TF "same" padding, as the implementation the weights were saved from). CAM layers:
#: blocks.2 / blocks.4 / blocks.6 (strides 8, 16, 32 before dilation).
EFFICIENTNET_LITE = {f"efficientnet_lite{n}": f"tf_efficientnet_lite{n}" for n in (0, 1, 2)}
for _name, _timm in EFFICIENTNET_LITE.items():
    _register(_name, ("conv_stem", "bn1", "blocks.0"), _timm)
