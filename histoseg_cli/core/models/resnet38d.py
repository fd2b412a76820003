"""ResNet-38 ("model A1", Wu et al. 2016) as used by the paper, output stride 8.

Pre-activation wide residual network: BN-ReLU precedes every convolution, and a block whose
shape changes projects its *activated* input with a 1x1 convolution. Module and parameter
names follow the reference implementation (``conv1a``, ``b2`` .. ``b7``, ``bn_branch2a``,
``conv_branch2b1`` ...) so its PyTorch state dicts and the converted MXNet weights load as is.
Grad-CAM layers: the outputs of ``b4_5`` (512 ch) and ``b5_2`` (1024 ch) and ReLU(``bn7``)
(4096 ch), all at 1/8 of the input size.

``width`` scales every channel count (1.0 is the paper's network); small widths exist for
tests and quick experiments, not for results.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from histoseg_cli.core.models.base import Backbone, register_backbone


class ResBlock(nn.Module):
    """Basic block: BN-ReLU -> 3x3 conv (mid) -> BN-ReLU -> 3x3 conv (out) (+ projection)."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, stride: int = 1,
                 first_dilation: int | None = None, dilation: int = 1) -> None:
        super().__init__()
        first_dilation = dilation if first_dilation is None else first_dilation
        self.same_shape = in_ch == out_ch and stride == 1
        self.bn_branch2a = nn.BatchNorm2d(in_ch)
        self.conv_branch2a = nn.Conv2d(in_ch, mid_ch, 3, stride, padding=first_dilation,
                                       dilation=first_dilation, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(mid_ch)
        self.conv_branch2b1 = nn.Conv2d(mid_ch, out_ch, 3, padding=dilation, dilation=dilation,
                                        bias=False)
        if not self.same_shape:
            self.conv_branch1 = nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn_branch2a(x))
        shortcut = x if self.same_shape else self.conv_branch1(act)
        y = self.conv_branch2a(act)
        y = self.conv_branch2b1(F.relu(self.bn_branch2b1(y)))
        return shortcut + y


class BottleneckBlock(nn.Module):
    """BN-ReLU -> 1x1 (out/4) -> BN-ReLU -> 3x3 (out/2) -> BN-ReLU -> 1x1 (out), with dropout
    before the last two convolutions, and a 1x1 projection of the activated input."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, dilation: int = 1,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.bn_branch2a = nn.BatchNorm2d(in_ch)
        self.conv_branch2a = nn.Conv2d(in_ch, out_ch // 4, 1, stride, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(out_ch // 4)
        self.dropout_2b1 = nn.Dropout2d(dropout)
        self.conv_branch2b1 = nn.Conv2d(out_ch // 4, out_ch // 2, 3, padding=dilation,
                                        dilation=dilation, bias=False)
        self.bn_branch2b2 = nn.BatchNorm2d(out_ch // 2)
        self.dropout_2b2 = nn.Dropout2d(dropout)
        self.conv_branch2b2 = nn.Conv2d(out_ch // 2, out_ch, 1, bias=False)
        self.conv_branch1 = nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn_branch2a(x))
        shortcut = self.conv_branch1(act)
        y = self.conv_branch2a(act)
        y = self.conv_branch2b1(self.dropout_2b1(F.relu(self.bn_branch2b1(y))))
        y = self.conv_branch2b2(self.dropout_2b2(F.relu(self.bn_branch2b2(y))))
        return shortcut + y


#: (name, in, mid, out, stride, first_dilation, dilation) of the basic blocks, paper widths
_BASIC_BLOCKS = (
    [("b2", 64, 128, 128, 2, None, 1), ("b2_1", 128, 128, 128, 1, None, 1),
     ("b2_2", 128, 128, 128, 1, None, 1),
     ("b3", 128, 256, 256, 2, None, 1), ("b3_1", 256, 256, 256, 1, None, 1),
     ("b3_2", 256, 256, 256, 1, None, 1),
     ("b4", 256, 512, 512, 2, None, 1)]
    + [(f"b4_{i}", 512, 512, 512, 1, None, 1) for i in range(1, 6)]
    + [("b5", 512, 512, 1024, 1, 1, 2), ("b5_1", 1024, 512, 1024, 1, None, 2),
       ("b5_2", 1024, 512, 1024, 1, None, 2)]
)


class ResNet38d(Backbone):
    """The paper's backbone; ``forward`` returns ``{"b4_5", "b5_2", "bn7"}`` activations."""

    cam_layers = ("b4_5", "b5_2", "bn7")
    normalisation = "scale01"
    stem_modules = ("conv1a", "b2", "b2_1", "b2_2")
    mxnet_weights = True
    output_stride = 8

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")

        def ch(c: int) -> int:
            return max(4, int(round(c * width / 4)) * 4)

        self.width = width
        self.conv1a = nn.Conv2d(3, ch(64), 3, padding=1, bias=False)
        self._block_names = [b[0] for b in _BASIC_BLOCKS]
        for name, cin, mid, cout, stride, first, dil in _BASIC_BLOCKS:
            self.add_module(name, ResBlock(ch(cin), ch(mid), ch(cout), stride, first, dil))
        self.b6 = BottleneckBlock(ch(1024), ch(2048), dilation=4, dropout=0.3)
        self.b7 = BottleneckBlock(ch(2048), ch(4096), dilation=4, dropout=0.5)
        self.bn7 = nn.BatchNorm2d(ch(4096))
        self.layer_channels = (ch(512), ch(1024), ch(4096))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        x = self.conv1a(x)
        for name in self._block_names:
            x = getattr(self, name)(x)
            if name in ("b4_5", "b5_2"):
                out[name] = x
        x = self.b7(self.b6(x))
        out["bn7"] = F.relu(self.bn7(x))
        return out


@register_backbone("resnet38d", strides=(8,))
def resnet38d(width: float = 1.0, output_stride: int = 8) -> ResNet38d:
    """ResNet-38 "A1" (the paper's network); ``width`` < 1 for tests only. Its dilations are
    fixed: output stride 8 only."""
    return ResNet38d(width=width)
