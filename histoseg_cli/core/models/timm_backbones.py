"""ImageNet encoders from timm, dilated to output stride 8 like ResNet-38 (16 for
EfficientNet-Lite).

For users who want a lighter network or easy ImageNet weights. The last three stages are the
Grad-CAM layers (``layer2``, ``layer3``, ``layer4`` for ResNets); EfficientNet-Lite ends in its
head convolution instead (:class:`TimmHeadBackbone`). Weights are never fetched at
construction: :func:`histoseg_cli.core.models.pretrained.load_pretrained` downloads them only
when the user asks for ``--pretrained imagenet``.
"""

from __future__ import annotations

from typing import Any

import torch

from histoseg_cli.core.models.base import Backbone, register_backbone
from histoseg_cli.core.models.preprocess import IMAGENET


class TimmBackbone(Backbone):
    """A timm ``features_only`` model exposing its last three stages."""

    def __init__(self, model_name: str, stem: tuple[str, ...], output_stride: int = 8) -> None:
        super().__init__()
        self.model_name = model_name  # the timm architecture
        self.encoder = self._build(model_name, output_stride)
        self.output_stride = output_stride
        cfg = self.encoder.pretrained_cfg
        self.normalisation = {"mean": list(cfg.get("mean", IMAGENET["mean"])),
                              "std": list(cfg.get("std", IMAGENET["std"]))}
        self.stem_modules = stem

    def _build(self, model_name: str, output_stride: int) -> torch.nn.Module:
        """The timm network; sets ``cam_layers`` and ``layer_channels``."""
        import timm  # here, not at the top: importing timm costs seconds (torchvision)

        encoder = timm.create_model(model_name, pretrained=False, features_only=True,
                                    out_indices=(-3, -2, -1), output_stride=output_stride)
        info = encoder.feature_info
        self.cam_layers = tuple(info.module_name())  # type: ignore[assignment]
        self.layer_channels = tuple(info.channels())  # type: ignore[assignment]
        return encoder

    def stem(self) -> list[torch.nn.Module]:
        """The encoder's stem and first stage (``stem_modules``, dotted names)."""
        return [self.encoder.get_submodule(name) for name in self.stem_modules]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(self.cam_layers, self.encoder(x)))


class TimmHeadBackbone(TimmBackbone):
    """A timm classification network without its classifier whose deepest CAM layer is the
    head convolution (``conv_head`` -> ``bn2`` with its activation), not the last stage.

    For networks whose stages end in a linear bottleneck (MobileNetV2 / EfficientNet blocks):
    the last stage's signed, unactivated channels (320 in Lite0) are a poor map to pool and
    explain, and stopping there throws away the ImageNet-trained head layer (1280 channels
    after ReLU6) that the ImageNet classifier itself pooled. The two shallower CAM layers
    stay the ends of the stages at strides 8 and 16.
    """

    head_layer = "bn2"

    def _build(self, model_name: str, output_stride: int) -> torch.nn.Module:
        import timm

        encoder = timm.create_model(model_name, pretrained=False, num_classes=0,
                                    global_pool="", output_stride=output_stride)
        stages = encoder.feature_info[-3:-1]
        self.cam_layers = (stages[0]["module"], stages[1]["module"], self.head_layer)
        self.layer_channels = (stages[0]["num_chs"], stages[1]["num_chs"],
                               encoder.num_features)
        return encoder

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        net = self.encoder
        x = net.bn1(net.conv_stem(x))
        layers = {}
        for index, block in enumerate(net.blocks):
            x = block(x)
            if f"blocks.{index}" in self.cam_layers:
                layers[f"blocks.{index}"] = x
        layers[self.head_layer] = net.bn2(net.conv_head(x))
        return layers


def _register(name: str, stem: tuple[str, ...], timm_name: str | None = None,
              kind: type[TimmBackbone] = TimmBackbone, default_stride: int = 8) -> None:
    @register_backbone(name, strides=(8, 16, 32))
    def factory(output_stride: int = default_stride, **kwargs: Any) -> TimmBackbone:
        return kind(timm_name or name, stem, output_stride=output_stride, **kwargs)

    factory.__doc__ = (f"timm {timm_name or name}, dilated to output stride {default_stride} "
                       "by default.")


_RESNET_STEM = ("conv1", "bn1", "layer1")
for _name in ("resnet10t", "resnet18", "resnet34", "resnet50", "resnet101", "resnext50_32x4d"):
    _register(_name, _RESNET_STEM)

#: Short names users type, for the timm variant whose weights install from the package index
#: (TF "same" padding, as the implementation the weights were saved from). CAM layers:
#: blocks.2 / blocks.4 (strides 8 and 16 before dilation) and the head, bn2 (stride 32).
#: Output stride 16 by default: with ImageNet weights its pseudo masks matched stride 8's on
#: real H&E at a third of the time (the dilated 5 x 5 depthwise convolutions are slow).
EFFICIENTNET_LITE = {f"efficientnet_lite{n}": f"tf_efficientnet_lite{n}" for n in (0, 1, 2)}
for _name, _timm in EFFICIENTNET_LITE.items():
    _register(_name, ("conv_stem", "bn1", "blocks.0"), _timm, TimmHeadBackbone,
              default_stride=16)
