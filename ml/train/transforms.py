"""Batch-level augmentation and normalisation on tensors (no per-image PIL work).

The thesis's augmentation: random zoom up to 1.1x and horizontal/vertical flips, no colour
jitter. Zoom and flips are one affine resampling per batch (`grid_sample`).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

Stats = tuple[tuple[float, float, float], tuple[float, float, float]]

IMAGENET_STATS: Stats = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# TensorFlow's EfficientNet-Lite (edge models, "inception-style"): (pixel - 127) / 128, i.e. [-1, 1]
TF_LITE_STATS: Stats = ((127 / 255,) * 3, (128 / 255,) * 3)
# The input normalisation each family's ImageNet weights were trained with (keys: ARCH_FAMILIES).
PRETRAINED_STATS: dict[str, Stats] = {
    "resnet": IMAGENET_STATS,  # torchvision's ResNet and ResNeXt
    "densenet": IMAGENET_STATS,
    "efficientnet_lite": TF_LITE_STATS,
}
TTA_VIEWS = ("identity", "hflip", "vflip", "zoom")
MAX_ZOOM = 1.1


def channel_stats(images: np.ndarray, chunk: int = 1024) -> Stats:
    """Per-channel mean and std in [0, 1] of uint8 NHWC images (chunked, memmap friendly).

    Exact: per-channel histograms of the 256 byte values give integer sums of values and of
    squares, so there is no float accumulation over millions of pixels (and it is ~10x faster
    than a float64 pass at 224 px)."""
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
        raise ValueError(f"expected non-empty (N,H,W,3) images, got {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}")
    counts = np.zeros(3 * 256, dtype=np.int64)
    offsets = np.array([0, 256, 512], dtype=np.int16)
    for start in range(0, len(images), chunk):
        block = np.asarray(images[start : start + chunk]).reshape(-1, 3)
        counts += np.bincount((block + offsets).ravel(), minlength=3 * 256)
    hist = counts.reshape(3, 256)
    values = np.arange(256, dtype=np.int64)
    n = int(hist[0].sum())
    total, total_sq = hist @ values, hist @ (values * values)  # exact integers
    mean = total / (255.0 * n)
    var = total_sq / (255.0**2 * n) - mean**2
    std = np.sqrt(np.maximum(var, 0.0)) + 1e-6
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)  # type: ignore[return-value]


def to_float_batch(
    batch: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...], channels_last: bool = False
) -> torch.Tensor:
    """uint8 NHWC -> normalised float32 NCHW (optionally in channels_last memory format)."""
    x = batch.permute(0, 3, 1, 2).float().div_(255.0)
    m, s = _stats_on(x.device, tuple(mean), tuple(std))
    x = (x - m) / s
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@functools.lru_cache(maxsize=32)
def _stats_on(
    device: torch.device, mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(1,3,1,1) mean and std tensors on `device`, made once: building them per batch from Python
    floats is a blocking host-to-device copy that stalls the CUDA queue every step."""
    return (torch.tensor(mean, device=device).view(1, 3, 1, 1), torch.tensor(std, device=device).view(1, 3, 1, 1))


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Small host tensor to `device` without a blocking copy (pinned + asynchronous on CUDA)."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample NCHW `x` with per-image 2x3 affine `theta` (normalised coordinates)."""
    grid = F.affine_grid(_to_device(theta.to(x.dtype), x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def augment_batch(
    x: torch.Tensor,
    generator: torch.Generator,
    max_zoom: float = MAX_ZOOM,
    hflip: bool = True,
    vflip: bool = True,
) -> torch.Tensor:
    """Random zoom (crop of area 1/max_zoom^2..1, same aspect, random offset) and random flips.

    Random draws come from `generator` (CPU) so that runs are reproducible and resumable.
    """
    n = x.shape[0]
    scale = 1.0 - torch.rand(n, generator=generator) * (1.0 - 1.0 / max_zoom)
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * (1 - scale).unsqueeze(1)
    flips = torch.rand(n, 2, generator=generator) < 0.5
    sx = torch.where(flips[:, 0] & hflip, -1.0, 1.0)
    sy = torch.where(flips[:, 1] & vflip, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = scale * sx
    theta[:, 1, 1] = scale * sy
    theta[:, :, 2] = shift
    return _affine(x, theta)


def tta_view(x: torch.Tensor, view: str, max_zoom: float = MAX_ZOOM) -> torch.Tensor:
    """One deterministic test-time view of NCHW `x`: identity, hflip, vflip or centre zoom."""
    if view == "identity":
        return x
    if view == "hflip":
        return x.flip(-1)
    if view == "vflip":
        return x.flip(-2)
    if view == "zoom":
        theta = torch.tensor([[1.0 / max_zoom, 0.0, 0.0], [0.0, 1.0 / max_zoom, 0.0]]).expand(x.shape[0], 2, 3)
        return _affine(x, theta)
    raise ValueError(f"unknown TTA view {view!r}; expected one of {TTA_VIEWS}")
