"""Image corruptions of the thesis's robustness study (chapter 5), on uint8 NHWC arrays.

The arrays are what the decoded cache (:mod:`ml.data.cache`) holds and what
:func:`ml.train.loop.fit` takes, so a corrupted copy of a split trains and evaluates exactly as a
clean one does. Every function is deterministic given its seed; image ``i`` of an array draws from
its own stream ``(seed, i)``, so the corruption of an image does not depend on the batch it is in.

- :func:`salt_and_pepper`: impulse noise on an exact share of the pixels (all three channels of a
  chosen pixel), black:white = 3:1 by default.
- :func:`gaussian_kernel`: isotropic Gaussian blur (3x3 for 32 px images, 5x5 or 7x7 for larger:
  :func:`default_kernel_size`).
- :func:`directional_kernel`: anisotropic blur along 45 degrees (motion with soft focus): a
  Gaussian elongated along the direction, narrow across it.
- :func:`blur`: a kernel applied per channel with reflected borders.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

BLACK_SHARE = 0.75  # black:white = 3:1 (thesis)
_CHUNK = 256  # images per block (memory maps are read block by block)


def _check_images(images: np.ndarray) -> None:
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N,H,W,3), got {images.dtype} {images.shape}")


def impulse_counts(height: int, width: int, share: float, black_share: float = BLACK_SHARE) -> tuple[int, int]:
    """``(black, white)`` pixel counts of one image: ``round(share * H * W)`` corrupted pixels, of
    which ``round(black_share * n)`` black."""
    if not 0 <= share <= 1:
        raise ValueError(f"share must lie in [0, 1], got {share}")
    if not 0 <= black_share <= 1:
        raise ValueError(f"black_share must lie in [0, 1], got {black_share}")
    n = int(round(share * height * width))
    black = int(round(black_share * n))
    return black, n - black


def salt_and_pepper(
    images: np.ndarray, share: float, seed: int | tuple[int, ...] = 0, black_share: float = BLACK_SHARE
) -> np.ndarray:
    """A copy of ``images`` with exactly ``impulse_counts(H, W, share)`` pixels per image set to
    black (0, 0, 0) or white (255, 255, 255), at positions drawn without replacement. Image ``i``
    draws from the stream ``(*seed, i)`` (a tuple seed keeps e.g. splits apart)."""
    _check_images(images)
    n_img, h, w, _ = images.shape
    black, white = impulse_counts(h, w, share, black_share)
    out = np.array(images, copy=True)
    if black + white == 0:
        return out
    flat = out.reshape(n_img, h * w, 3)
    stream = (seed,) if isinstance(seed, int) else tuple(seed)
    for i in range(n_img):
        pos = np.random.default_rng([*stream, i]).choice(h * w, size=black + white, replace=False)
        flat[i, pos[:black]] = 0
        flat[i, pos[black:]] = 255
    return out


def default_kernel_size(image_size: int) -> int:
    """The thesis's kernel for an image side: 3 up to 32 px, 5 up to 96 px, 7 above."""
    if image_size <= 32:
        return 3
    return 5 if image_size <= 96 else 7


def _check_size(size: int) -> None:
    if size < 1 or size % 2 == 0:
        raise ValueError(f"kernel size must be odd and positive, got {size}")


def default_sigma(size: int) -> float:
    """OpenCV's rule for a Gaussian's sigma from its kernel size: 0.3 * ((k - 1) / 2 - 1) + 0.8."""
    return 0.3 * ((size - 1) * 0.5 - 1) + 0.8


def gaussian_kernel(size: int, sigma: float | None = None) -> np.ndarray:
    """Isotropic (size, size) Gaussian kernel, float64, summing to 1."""
    _check_size(size)
    s = default_sigma(size) if sigma is None else float(sigma)
    if s <= 0:
        raise ValueError(f"sigma must be positive, got {s}")
    r = np.arange(size) - size // 2
    g = np.exp(-(r**2) / (2 * s * s))
    k = np.outer(g, g)
    return k / k.sum()


def directional_kernel(
    size: int, angle_deg: float = 45.0, sigma_along: float | None = None, sigma_across: float = 0.5
) -> np.ndarray:
    """Anisotropic (size, size) kernel, float64, summing to 1: a Gaussian with standard deviation
    ``sigma_along`` (default size / 4) along the direction ``angle_deg`` (counter-clockwise from
    the x axis, image rows pointing down) and ``sigma_across`` across it (soft focus)."""
    _check_size(size)
    along = size / 4 if sigma_along is None else float(sigma_along)
    if along <= 0 or sigma_across <= 0:
        raise ValueError(f"sigmas must be positive, got {along}, {sigma_across}")
    r = np.arange(size) - size // 2
    x, y = np.meshgrid(r, -r)  # y up: row 0 is the top
    t = math.radians(angle_deg)
    u = x * math.cos(t) + y * math.sin(t)  # along
    v = -x * math.sin(t) + y * math.cos(t)  # across
    k = np.exp(-(u**2) / (2 * along**2) - v**2 / (2 * sigma_across**2))
    return k / k.sum()


def blur(images: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``images`` convolved per channel with ``kernel`` (reflected borders), rounded to uint8."""
    _check_images(images)
    k = np.asarray(kernel, dtype=np.float64)
    if k.ndim != 2 or k.shape[0] % 2 == 0 or k.shape[1] % 2 == 0:
        raise ValueError(f"kernel must be 2-d with odd sides, got {k.shape}")
    weight = torch.from_numpy(k[::-1, ::-1].copy()).float().expand(3, 1, *k.shape)  # conv2d correlates
    ph, pw = k.shape[0] // 2, k.shape[1] // 2
    out = np.empty_like(images)
    for start in range(0, len(images), _CHUNK):
        x = torch.from_numpy(np.ascontiguousarray(images[start : start + _CHUNK])).permute(0, 3, 1, 2).float()
        x = F.pad(x, (pw, pw, ph, ph), mode="reflect") if ph or pw else x
        y = F.conv2d(x, weight, groups=3)
        out[start : start + _CHUNK] = y.round_().clamp_(0, 255).permute(0, 2, 3, 1).to(torch.uint8).numpy()
    return out
