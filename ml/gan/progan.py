"""Progressive growing of GANs (Karras, Aila, Laine, Lehtinen, ICLR 2018), the parts by section:

- 3 / Fig. 1-2: both networks grow from 4x4 by doubling; a new layer is *faded in*: its output is
  ``alpha * new + (1 - alpha) * old`` where ``old`` is the previous resolution's path (upsampled
  by nearest neighbour in G, average-pooled in D) and alpha goes linearly from 0 to 1.
- 3 / Table 2: each resolution block is two 3x3 convolutions with leaky ReLU (0.2); G's first
  block maps the latent to 4x4 (a dense layer, here ``EqualizedLinear``, then a 3x3 conv), D's
  last block is minibatch-stddev -> 3x3 conv -> 4x4 conv -> dense to one score. ``toRGB`` and
  ``fromRGB`` are 1x1 convolutions.
- 4.1 equalised learning rate: weights are drawn from N(0, 1) and multiplied at run time by the
  He constant ``c = sqrt(2 / fan_in)`` (``gain / sqrt(fan_in)``, gain 1 for toRGB).
- 4.2 pixelwise feature normalisation in G after every convolution:
  ``b = a / sqrt(mean_over_channels(a^2) + 1e-8)``; the latent is normalised the same way.
- 3 minibatch standard deviation: the std of each feature over groups of ``group`` images,
  averaged to one number per group, appended as an extra feature map at D's 4x4 block.

The loss (WGAN-GP with the drift term) is in :mod:`ml.gan.losses`, the schedule and loop in
:mod:`ml.gan.train`. A stage index ``s`` means resolution ``4 * 2**s``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LEAK = 0.2


def stage_resolution(stage: int) -> int:
    return 4 * 2**stage


def num_stages(resolution: int) -> int:
    """Stages from 4x4 to ``resolution`` (a power of 2 >= 4)."""
    stages = int(round(math.log2(resolution / 4))) + 1
    if stage_resolution(stages - 1) != resolution:
        raise ValueError(f"resolution must be 4 * 2**k, got {resolution}")
    return stages


def stage_channels(resolution: int, max_channels: int, min_channels: int) -> list[int]:
    """Feature maps per stage: ``max_channels`` up to 16 px, halved per doubling above (as the
    paper's 512 up to 64 px, then 256, 128, ...), never below ``min_channels``."""
    return [max(min_channels, max_channels // 2 ** max(0, s - 2)) for s in range(num_stages(resolution))]


class EqualizedLinear(nn.Module):
    """Dense layer with weights ~ N(0, 1) scaled at run time by ``gain / sqrt(fan_in)`` (4.1)."""

    def __init__(self, in_features: int, out_features: int, gain: float = math.sqrt(2)):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.scale = gain / math.sqrt(in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


class EqualizedConv2d(nn.Module):
    """Convolution with weights ~ N(0, 1) scaled at run time by ``gain / sqrt(in * k * k)`` (4.1)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0, gain: float = math.sqrt(2)
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.scale = gain / math.sqrt(in_channels * kernel_size * kernel_size)
        self.padding = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)


class PixelNorm(nn.Module):
    """Normalise each pixel's feature vector to unit average square (4.2)."""

    def __init__(self, eps: float = 1e-8):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + self.eps)


class MinibatchStdDev(nn.Module):
    """Append the mean over features and pixels of the per-group standard deviation (3)."""

    def __init__(self, group: int = 4):
        super().__init__()
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = min(self.group, n)
        if n % g:  # a last batch not divisible by the group: one group
            g = n
        y = x.float().reshape(g, -1, c, h, w)  # [G, M, C, H, W]: image m of every group shares a statistic
        y = (y - y.mean(dim=0)).pow(2).mean(dim=0).add(1e-8).sqrt()  # std over each group's G images
        y = y.mean(dim=(1, 2, 3)).to(x.dtype)  # [M]
        y = y.repeat(g).reshape(n, 1, 1, 1).expand(n, 1, h, w)
        return torch.cat([x, y], dim=1)


def _conv(in_ch: int, out_ch: int, k: int = 3, pixelnorm: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [EqualizedConv2d(in_ch, out_ch, k, padding=k // 2), nn.LeakyReLU(LEAK)]
    return layers + [PixelNorm()] if pixelnorm else layers


class Generator(nn.Module):
    """z -> image at the current stage; ``forward(z, stage, alpha)`` fades stage ``stage`` in."""

    def __init__(self, resolution: int = 32, latent_dim: int = 128, max_channels: int = 128, min_channels: int = 16):
        super().__init__()
        ch = stage_channels(resolution, max_channels, min_channels)
        self.resolution, self.latent_dim, self.channels = resolution, latent_dim, ch
        self.pixelnorm = PixelNorm()
        # 4x4 block: dense latent -> 4x4 maps (the paper's 4x4 "conv" on a 1x1 input), then a 3x3 conv
        self.dense = EqualizedLinear(latent_dim, ch[0] * 16, gain=math.sqrt(2) / 4)
        self.blocks = nn.ModuleList([nn.Sequential(*_conv(ch[0], ch[0]))])
        for s in range(1, len(ch)):  # upsample, then two 3x3 convolutions
            self.blocks.append(nn.Sequential(*_conv(ch[s - 1], ch[s]), *_conv(ch[s], ch[s])))
        self.to_rgb = nn.ModuleList([EqualizedConv2d(c, 3, 1, gain=1.0) for c in ch])

    @property
    def stages(self) -> int:
        return len(self.channels)

    def forward(self, z: torch.Tensor, stage: int, alpha: float = 1.0) -> torch.Tensor:
        x = self.pixelnorm(z)
        x = F.leaky_relu(self.dense(x), LEAK).reshape(len(z), self.channels[0], 4, 4)
        x = self.blocks[0](self.pixelnorm(x))
        for s in range(1, stage + 1):
            previous = x
            x = self.blocks[s](F.interpolate(x, scale_factor=2, mode="nearest"))
        rgb = self.to_rgb[stage](x)
        if stage > 0 and alpha < 1.0:  # fade-in: the old path's image, upsampled
            old = F.interpolate(self.to_rgb[stage - 1](previous), scale_factor=2, mode="nearest")
            rgb = alpha * rgb + (1.0 - alpha) * old
        return rgb


class Discriminator(nn.Module):
    """image at the current stage -> critic score; ``forward(x, stage, alpha)`` fades stage in."""

    def __init__(self, resolution: int = 32, max_channels: int = 128, min_channels: int = 16, mbstd_group: int = 4):
        super().__init__()
        ch = stage_channels(resolution, max_channels, min_channels)
        self.resolution, self.channels = resolution, ch
        self.from_rgb = nn.ModuleList([nn.Sequential(EqualizedConv2d(3, c, 1), nn.LeakyReLU(LEAK)) for c in ch])
        # blocks[s] takes stage s's maps down to stage s-1's (two 3x3 convs, then 2x average pooling)
        self.blocks = nn.ModuleList([nn.Identity()])
        for s in range(1, len(ch)):
            self.blocks.append(
                nn.Sequential(
                    *_conv(ch[s], ch[s], pixelnorm=False), *_conv(ch[s], ch[s - 1], pixelnorm=False), nn.AvgPool2d(2)
                )
            )
        self.mbstd = MinibatchStdDev(mbstd_group)
        self.final = nn.Sequential(
            *_conv(ch[0] + 1, ch[0], pixelnorm=False), EqualizedConv2d(ch[0], ch[0], 4), nn.LeakyReLU(LEAK)
        )
        self.score = EqualizedLinear(ch[0], 1, gain=1.0)

    @property
    def stages(self) -> int:
        return len(self.channels)

    def forward(self, x: torch.Tensor, stage: int, alpha: float = 1.0) -> torch.Tensor:
        h = self.from_rgb[stage](x)
        if stage > 0:
            h = self.blocks[stage](h)
            if alpha < 1.0:  # fade-in: the old path reads the half-resolution image
                h = alpha * h + (1.0 - alpha) * self.from_rgb[stage - 1](F.avg_pool2d(x, 2))
            for s in range(stage - 1, 0, -1):
                h = self.blocks[s](h)
        h = self.final(self.mbstd(h))
        return self.score(h.flatten(1))


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
