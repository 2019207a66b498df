"""SD-198-style synthetic skin photographs with per-image ground truth.

`generate(out_dir, cfg)` writes an ImageFolder (`out_dir/<label>/<label>_<i:04d>.<fmt>`) and
`out_dir/synth_meta.csv`. Every image draws from its own random streams seeded by
`[seed, stream, label_index, image_index, part]`, so one knob (pen marks, noise, ...) changes
only its own pixels and adding a class never reshuffles the others.

Rendering order: skin albedo -> lesion -> drape / dark background -> pen marks / ruler ->
illumination shading -> gamma -> flash -> blur -> impulse noise -> watermark band.

Acquisition looks of clinical photographs (DermQuest-style), all off by default so that existing
datasets keep their bytes: ``drape_rate`` (a blue, cyan or green surgical drape entering from one
edge, covering ``drape_share`` of the frame), ``dark_background_rate`` (black background around
the body part, from one edge or two opposite ones, ``background_share`` of the frame) and
``watermark_rate`` (a dark or white strip along the bottom with publisher text). None of them
covers the lesion; each draws from its own random stream.
"""

from __future__ import annotations

import csv
import functools
import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

LABELS: tuple[str, ...] = (
    "acne",
    "alopecia",
    "blister",
    "crust",
    "erythema",
    "leukoderma",
    "macula",
    "tumor",
    "ulcer",
    "wheal",
)
META_COLUMNS: tuple[str, ...] = (
    "path",
    "label",
    "kind",
    "duplicate_of",
    "pen_mark",
    "ruler",
    "skin_tone",
    "gamma",
    "flash",
    "lesion_share",
    "drape",
    "dark_background",
    "watermark",
    "distractor",
)
DISTRACTORS: tuple[str, ...] = ("hair", "lips", "dark_lesion", "shadow")
"""Looks that are not ink but that a pen-mark detector may take for it (issue #27): dark hair
strokes, lips (red mucosa), a very dark pigmented lesion, a cast shadow. Dark skin is the
``skin_tones`` knob."""
CORRUPT_KINDS: tuple[str, ...] = ("zero_bytes", "truncated", "not_an_image")
N_SKIN_TONES = 6
LONG_TAIL_RANGE = (10, 60)
JPEG_QUALITY = 92

# Random stream tags: [seed, stream, label_index, index, part].
_S_IMAGE, _S_DUPLICATE, _S_NEAR, _S_COUNTS = 0, 1, 2, 3
_P_CONTENT, _P_PEN, _P_RULER, _P_PHOTO, _P_NOISE = 0, 1, 2, 3, 4
_P_DRAPE, _P_BACKGROUND, _P_WATERMARK, _P_DISTRACTOR = 5, 6, 7, 8

# Skin albedo per tone bin, light (0) to dark (5), roughly Fitzpatrick I-VI.
_SKIN = np.array(
    [
        [242, 212, 192],
        [228, 188, 158],
        [204, 158, 122],
        [170, 120, 86],
        [126, 86, 60],
        [86, 58, 42],
    ],
    dtype=np.float32,
)
# Lesion palettes: anchors a colour is interpolated between (RGB).
_PALETTES: dict[str, np.ndarray] = {
    "acne": np.array([[200, 72, 72], [180, 60, 65], [215, 95, 90]], np.float32),
    "alopecia": np.array([[28, 22, 18], [70, 48, 32], [120, 90, 60], [150, 148, 145]], np.float32),
    "blister": np.array([[238, 224, 190], [230, 210, 170], [240, 232, 215]], np.float32),
    "crust": np.array([[200, 150, 62], [150, 92, 48], [104, 44, 32], [175, 110, 50]], np.float32),
    "erythema": np.array([[205, 78, 76], [178, 62, 70], [168, 88, 72], [215, 110, 100]], np.float32),
    "leukoderma": np.array([[250, 240, 230], [245, 232, 222], [238, 226, 214]], np.float32),
    "macula": np.array([[172, 112, 74], [120, 72, 46], [66, 40, 28], [160, 88, 66]], np.float32),
    "tumor": np.array([[176, 36, 46], [130, 42, 72], [120, 76, 56], [62, 36, 28], [214, 150, 136]], np.float32),
    "ulcer": np.array([[176, 46, 46], [206, 176, 96], [58, 32, 26], [190, 80, 70]], np.float32),
    "wheal": np.array([[226, 124, 122], [202, 84, 88], [236, 160, 150]], np.float32),
}
# The thesis's confusable pairs: with _BORROW probability a lesion takes its partner's colour.
_PARTNERS: dict[str, tuple[str, ...]] = {
    "ulcer": ("tumor", "crust"),
    "tumor": ("ulcer",),
    "crust": ("ulcer",),
    "erythema": ("macula", "wheal"),
    "macula": ("erythema",),
    "wheal": ("erythema",),
}
_BORROW = 0.25
_INKS = np.array([[35, 55, 190], [105, 40, 150], [25, 130, 70], [25, 25, 30]], np.float32)
_INK_WEIGHTS = np.array([0.4, 0.3, 0.15, 0.15])
DRAPE_COLOURS: dict[str, tuple[float, float, float]] = {
    "blue": (46, 92, 168),
    "cyan": (40, 158, 178),
    "green": (58, 136, 108),
}
_WATERMARK_TEXTS = ("(c) DermAtlas.net", "www.dermimages.org", "Clinical Atlas", "DermQuest-like 2011")


@dataclass(frozen=True)
class SynthConfig:
    """What to generate; see the module docstring for the rendering order."""

    per_class: int | None = 20
    long_tail: bool = False
    class_priors: dict[str, float] | None = None
    total: int | None = None
    size: int = 128
    seed: int = 0
    pen_rate: float | dict[str, float] = 0.0
    ruler_rate: float | dict[str, float] = 0.0
    gamma: tuple[float, float] = (1.0, 1.0)
    flash_rate: float = 0.0
    fov: tuple[float, float] = (0.35, 0.6)
    noise: float = 0.0
    blur: float = 0.0
    skin_tones: list[float] | None = None
    duplicate_rate: float = 0.0
    near_duplicate_rate: float = 0.0
    corrupt: int = 0
    fmt: str = "jpg"
    drape_rate: float = 0.0
    drape_colour: str = "mixed"
    drape_share: tuple[float, float] = (0.15, 0.4)
    dark_background_rate: float = 0.0
    background_share: tuple[float, float] = (0.15, 0.4)
    watermark_rate: float = 0.0
    distractor_rate: float = 0.0
    distractors: tuple[str, ...] = DISTRACTORS

    def __post_init__(self) -> None:
        _check_counts(self)
        if self.size < 16:
            raise ValueError(f"size must be >= 16 px, got {self.size}")
        for name in ("pen_rate", "ruler_rate"):
            for rate in _rate_table(getattr(self, name), name).values():
                _check_unit(name, rate)
        for name in (
            "flash_rate",
            "noise",
            "duplicate_rate",
            "near_duplicate_rate",
            "drape_rate",
            "dark_background_rate",
            "watermark_rate",
            "distractor_rate",
        ):
            _check_unit(name, getattr(self, name))
        unknown = sorted(set(self.distractors) - set(DISTRACTORS))
        if unknown or not self.distractors:
            raise ValueError(f"distractors must be some of {list(DISTRACTORS)}, got {list(self.distractors)}")
        _check_range("gamma", self.gamma, 0.0, float("inf"))
        _check_range("fov", self.fov, 0.0, 0.9)
        _check_range("drape_share", self.drape_share, 0.0, 0.6)
        _check_range("background_share", self.background_share, 0.0, 0.6)
        if self.drape_colour not in (*DRAPE_COLOURS, "mixed"):
            raise ValueError(f"drape_colour must be one of {[*DRAPE_COLOURS, 'mixed']}, got {self.drape_colour!r}")
        if self.blur < 0:
            raise ValueError(f"blur must be >= 0, got {self.blur}")
        if self.corrupt < 0:
            raise ValueError(f"corrupt must be >= 0, got {self.corrupt}")
        if self.fmt not in ("jpg", "png"):
            raise ValueError(f"fmt must be 'jpg' or 'png', got {self.fmt!r}")
        _tone_weights(self.skin_tones)


def _check_unit(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def _check_range(name: str, bounds: tuple[float, float], lo: float, hi: float) -> None:
    if len(bounds) != 2 or not lo < bounds[0] <= bounds[1] <= hi:
        raise ValueError(f"{name} must be (low, high) with {lo} < low <= high <= {hi}, got {bounds}")


def _check_counts(cfg: SynthConfig) -> None:
    if cfg.long_tail and cfg.class_priors is not None:
        raise ValueError("give either long_tail or class_priors, not both")
    if cfg.class_priors is not None:
        unknown = sorted(set(cfg.class_priors) - set(LABELS))
        if unknown:
            raise ValueError(f"class_priors has unknown labels {unknown}; known: {list(LABELS)}")
        if any(p < 0 for p in cfg.class_priors.values()) or sum(cfg.class_priors.values()) <= 0:
            raise ValueError(f"class_priors must be >= 0 with a positive sum, got {cfg.class_priors}")
        if cfg.total is None or cfg.total < 1:
            raise ValueError(f"class_priors needs total >= 1, got total={cfg.total}")
    elif not cfg.long_tail and (cfg.per_class is None or cfg.per_class < 1):
        raise ValueError(f"per_class must be >= 1, got {cfg.per_class}")


def _rate_table(rate: float | dict[str, float], name: str) -> dict[str, float]:
    """Per-label rates from a scalar or a partial {label: rate} dict (missing labels: 0)."""
    if not isinstance(rate, dict):
        return dict.fromkeys(LABELS, float(rate))
    unknown = sorted(set(rate) - set(LABELS))
    if unknown:
        raise ValueError(f"{name} has unknown labels {unknown}; known: {list(LABELS)}")
    return {label: float(rate.get(label, 0.0)) for label in LABELS}


def _tone_weights(weights: Sequence[float] | None) -> np.ndarray:
    if weights is None:
        return np.full(N_SKIN_TONES, 1.0 / N_SKIN_TONES)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (N_SKIN_TONES,) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"skin_tones must be {N_SKIN_TONES} non-negative weights with a positive sum, got {weights}")
    return w / w.sum()


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


def class_counts(cfg: SynthConfig) -> dict[str, int]:
    """Images per label: per_class, SD-198-like long tail, or round(total * prior)."""
    if cfg.class_priors is not None:
        norm = sum(cfg.class_priors.values())
        total = cfg.total or 0
        priors = cfg.class_priors
        return {label: round(total * priors[label] / norm) for label in LABELS if label in priors}
    if cfg.long_tail:
        lo, hi = LONG_TAIL_RANGE
        draws = np.exp(_rng(cfg.seed, _S_COUNTS).uniform(np.log(lo), np.log(hi), len(LABELS)))
        return {label: int(np.clip(round(d), lo, hi)) for label, d in zip(LABELS, draws)}
    return dict.fromkeys(LABELS, int(cfg.per_class or 0))


# ----------------------------------------------------------------------------- fields


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Band-limited noise, unit-ish std: a cells x cells normal grid resized bicubically."""
    small = rng.standard_normal((cells, cells)).astype(np.float32)
    field = Image.fromarray(small, mode="F").resize((size, size), Image.BICUBIC)
    return np.asarray(field, dtype=np.float32)


def _blob(
    rng: np.random.Generator,
    size: int,
    centre: tuple[float, float],
    radius: float,
    irregular: float,
    softness: float,
    ecc: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """An irregular ellipse: (soft mask in [0, 1], normalised radius d; d = 1 on the border)."""
    yy, xx = _grid(size)
    angle = rng.uniform(0, np.pi)
    dx, dy = xx - centre[0], yy - centre[1]
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / ecc
    theta = np.arctan2(v, u)
    border = np.ones_like(theta)
    for k in range(2, 7):
        border += irregular * rng.standard_normal() / k * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    d = np.hypot(u, v) / (radius * np.maximum(border, 0.3))
    return np.clip((1.0 - d) / max(softness, 1e-3) + 0.5, 0.0, 1.0), d


def _spots(
    rng: np.random.Generator, size: int, env: np.ndarray, count: int, radius: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`count` round spots placed inside the envelope: (centres (n,2), radii (n,), d (n,H,W))."""
    ys, xs = np.nonzero(env > 0.5)
    if ys.size == 0:  # a lesion smaller than a pixel: use its peak
        ys, xs = np.unravel_index([env.argmax()], env.shape)
    pick = rng.integers(0, len(ys), count)
    centres = np.stack([xs[pick], ys[pick]], axis=1).astype(np.float32)
    radii = rng.uniform(*radius, count).astype(np.float32) * size
    yy, xx = _grid(size)
    d = np.hypot(xx[None] - centres[:, 0, None, None], yy[None] - centres[:, 1, None, None])
    return centres, radii, d / radii[:, None, None]


def _soft(d: np.ndarray, softness: float) -> np.ndarray:
    return np.clip((1.0 - d) / softness + 0.5, 0.0, 1.0)


def _paint(img: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> None:
    """In place: img <- img * (1 - alpha) + colour * alpha (colour (3,) or (H,W,3))."""
    img += (colour - img) * alpha[..., None]


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114], np.float32)


# ----------------------------------------------------------------------------- skin


def _skin(rng: np.random.Generator, size: int, tone: int) -> np.ndarray:
    """Skin albedo (H,W,3 float 0..255): tone colour, mottling, fine grain and pores."""
    base = _SKIN[tone] * (1 + rng.normal(0, 0.04, 3)).astype(np.float32)
    mottle = _smooth_noise(rng, size, 6) * rng.uniform(0.01, 0.03)
    grain = rng.standard_normal((size, size)).astype(np.float32) * rng.uniform(0.01, 0.035)
    img = base * (1 + mottle + grain)[..., None]
    img += rng.normal(0, 2.0, (size, size, 3)).astype(np.float32)
    n_pores = int(size * size * rng.uniform(0.004, 0.012))
    py, px = rng.integers(0, size, (2, n_pores))
    img[py, px] *= rng.uniform(0.8, 0.93, (n_pores, 1)).astype(np.float32)
    return img


def _lesion_colour(rng: np.random.Generator, label: str) -> np.ndarray:
    """Primary colour: the label's palette, or with _BORROW chance a confusable partner's."""
    partners = _PARTNERS.get(label, ())
    source = label
    if partners and rng.random() < _BORROW:
        source = partners[rng.integers(len(partners))]
    anchors = _PALETTES[source]
    i, j = rng.integers(0, len(anchors), 2)
    t = rng.random()
    colour = anchors[i] * (1 - t) + anchors[j] * t + rng.normal(0, 8, 3)
    return np.clip(colour, 0, 255).astype(np.float32)


# ----------------------------------------------------------------------------- lesions
# Each renderer paints into the albedo `img` in place and returns a shading map (1 = none).


@dataclass
class _Lesion:
    """Where the lesion is: centre, radius and its envelope (the lesion region's mask)."""

    centre: tuple[float, float]
    radius: float
    env: np.ndarray
    d: np.ndarray
    colour: np.ndarray
    skin: np.ndarray


def _halo(img: np.ndarray, les: _Lesion, rng: np.random.Generator, strength: float) -> None:
    red = _PALETTES["erythema"][0]
    ring = np.clip(1.5 - les.d, 0, 1) * (1 - les.env)
    _paint(img, ring * strength * rng.uniform(0.5, 1.0), red)


def _render_acne(img: np.ndarray, les: _Lesion, rng: np.random.Generator) -> np.ndarray:
    size = img.shape[0]
    _, _, d = _spots(rng, size, les.env, int(rng.integers(6, 36)), (0.012, 0.035))
    papule = _soft(d, 0.6).max(axis=0)
    _paint(img, papule * rng.uniform(0.55, 0.9), les.colour)
    heads = _soft(d / 0.35, 0.5) * (rng.random(len(d)) < 0.35)[:, None, None]
    _paint(img, heads.max(axis=0) * 0.85, np.array([240, 225, 170], np.float32))
    comedo = _soft(d / 0.25, 0.5) * (rng.random(len(d)) < 0.15)[:, None, None]
    _paint(img, comedo.max(axis=0) * 0.9, np.array([40, 30, 25], np.float32))
    return 1.0 + 0.08 * papule


def _render_alopecia(img: np.ndarray, les: _Lesion, rng: np.random.Generator) -> np.ndarray:
    size = img.shape[0]
    _paint(img, les.env * rng.uniform(0.1, 0.3), np.array([235, 200, 190], np.float32))
    n = int(size * size * rng.uniform(0.03, 0.06))
    roots = rng.uniform(0, size, (n, 2)).astype(np.float32)
    yy_r, xx_r = roots[:, 1].astype(int), roots[:, 0].astype(int)
    keep = (les.env[yy_r, xx_r] < 0.5) | (rng.random(n) < 0.03)
    roots = roots[keep]
    lengths = rng.uniform(0.04, 0.12, len(roots)) * size
    angle = rng.normal(rng.uniform(0, 2 * np.pi), 0.3, len(roots))
    t = np.linspace(0, 1, max(8, size // 8), dtype=np.float32)
    xs = roots[:, :1] + np.cos(angle)[:, None] * lengths[:, None] * t
    ys = roots[:, 1:] + np.sin(angle)[:, None] * lengths[:, None] * t
    inside = (xs >= 0) & (xs < size) & (ys >= 0) & (ys < size)
    px, py = xs[inside].astype(int), ys[inside].astype(int)
    img[py, px] = img[py, px] * 0.2 + les.colour * 0.8
    return np.ones(img.shape[:2], np.float32)


def _render_blister(img: np.ndarray, les: _Lesion, rng: np.random.Generator) -> np.ndarray:
    size = img.shape[0]
    centres, radii, d = _spots(rng, size, les.env, int(rng.integers(1, 13)), (0.03, 0.09))
    halo = _soft(d / 1.4, 0.8).max(axis=0)
    _paint(img, halo * rng.uniform(0.2, 0.5), _PALETTES["erythema"][0])
    vesicle = _soft(d, 0.25).max(axis=0)
    _paint(img, vesicle * rng.uniform(0.45, 0.75), les.colour)
    rim = np.clip(1 - np.abs(d - 0.95) / 0.12, 0, 1).max(axis=0)
    _paint(img, rim * 0.3, les.colour * 0.6)
    yy, xx = _grid(size)
    off = centres - 0.4 * radii[:, None]
    glint = np.exp(
        -((xx[None] - off[:, 0, None, None]) ** 2 + (yy[None] - off[:, 1, None, None]) ** 2)
        / (2 * (0.18 * radii[:, None, None]) ** 2)
    ).max(axis=0)
    _paint(img, glint * 0.8, np.array([252, 252, 250], np.float32))
    return 1.0 + 0.1 * vesicle


def _render_crust(img: np.ndarray, les: _Lesion, rng: np.random.Generator) -> np.ndarray:
    _halo(img, les, rng, 0.5)
    size = img.shape[0]
    rough = _smooth_noise(rng, size, max(4, size // 4))
    tint = les.colour * (1 + 0.2 * np.clip(rough, -1.5, 1.5))[..., None]
    _paint(img, les.env * rng.uniform(0.75, 0.95), tint)
    cracks = (np.abs(_smooth_noise(rng, size, max(4, size // 8))) < 0.06) * les.env
    _paint(img, cracks * 0.4, les.colour * 0.4)
    return 1.0 + 0.12 * les.env * np.clip(rough, -1, 1)


def _render_erythema(img: np.ndarray, les: _Lesion, rng: np.random.Generator) -> np.ndarray:
    mottle = np.clip(0.75 + 0.25 * _smooth_noise(rng, img.shape[0], 8), 0, 1)
    alpha = les.env * mottle * rng.uniform(0.35, 0.75)
    if rng.random() < 0.3:  # annular (erythema annulare, multiforme targets)
        alpha *= np.clip((les.d - rng.uniform(0.4, 0.7)) / 0.2, 0.15, 1)
    _paint(img, alpha, les.colour)
    return np.ones(img.shape[:2], np.float32)


def _render_leukoderma(img: np.ndarray, les: _Lesion, rng: np.random.Generator) -> np.ndarray:
    target = np.maximum(les.colour, les.skin)
    mottle = np.clip(0.85 + 0.15 * _smooth_noise(rng, img.shape[0], 12), 0, 1)
    _paint(img, les.env * mottle * rng.uniform(0.55, 0.95), target)
    return np.ones(img.shape[:2], np.float32)


def _render_macula(img: np.ndarray, les: _Lesion, rng: np.random.Generator) -> np.ndarray:
    colour = les.colour * min(1.0, 0.8 * float(_luma(les.skin)) / max(float(_luma(les.colour)), 1))
    mottle = np.clip(1 + 0.12 * _smooth_noise(rng, img.shape[0], 10), 0.7, 1.3)
    _paint(img, les.env * rng.uniform(0.6, 0.95), colour * mottle[..., None])
    return np.ones(img.shape[:2], np.float32)


def _render_tumor(img: np.ndarray, les: _Lesion, rng: np.random.Generator) -> np.ndarray:
    _paint(img, les.env * rng.uniform(0.75, 0.98), les.colour)
    size = img.shape[0]
    yy, xx = _grid(size)
    light = rng.uniform(0, 2 * np.pi)
    lx, ly = np.cos(light), np.sin(light)
    slope = ((xx - les.centre[0]) * lx + (yy - les.centre[1]) * ly) / les.radius
    dome = 1 + les.env * (0.25 * slope - 0.3 * np.clip(les.d, 0, 1) ** 2)
    gx = les.centre[0] + 0.45 * les.radius * lx
    gy = les.centre[1] + 0.45 * les.radius * ly
    glint = np.exp(-((xx - gx) ** 2 + (yy - gy) ** 2) / (2 * (0.12 * les.radius) ** 2))
    _paint(img, glint * les.env * rng.uniform(0.3, 0.8), np.array([250, 245, 240], np.float32))
    return dome


def _render_ulcer(img: np.ndarray, les: _Lesion, rng: np.random.Generator) -> np.ndarray:
    _halo(img, les, rng, 0.45)
    size = img.shape[0]
    slough = np.clip(_smooth_noise(rng, size, 6) - rng.uniform(-0.5, 1.0), 0, 1)
    base = les.colour + (_PALETTES["ulcer"][1] - les.colour) * slough[..., None]
    _paint(img, les.env * 0.92, base)
    rim = np.clip(1 - np.abs(les.d - 0.97) / 0.15, 0, 1)
    _paint(img, rim * 0.5, _PALETTES["wheal"][0])
    crater = 1 - 0.35 * les.env * np.clip((les.d - 0.6) / 0.35, 0, 1) + 0.12 * rim
    return crater


def _render_wheal(img: np.ndarray, les: _Lesion, rng: np.random.Generator) -> np.ndarray:
    size = img.shape[0]
    _, _, d = _spots(rng, size, les.env, int(rng.integers(1, 5)), (0.08, 0.2))
    plaque = _soft(d, rng.uniform(0.2, 0.5)).max(axis=0)
    flare = _soft(d / 1.35, 0.6).max(axis=0)
    _paint(img, flare * rng.uniform(0.4, 0.7), les.colour)
    _paint(img, plaque * rng.uniform(0.3, 0.6), np.maximum(les.skin, [238, 200, 195]))
    return 1.0 + 0.06 * plaque


_RENDERERS: dict[str, Callable[[np.ndarray, _Lesion, np.random.Generator], np.ndarray]] = {
    "acne": _render_acne,
    "alopecia": _render_alopecia,
    "blister": _render_blister,
    "crust": _render_crust,
    "erythema": _render_erythema,
    "leukoderma": _render_leukoderma,
    "macula": _render_macula,
    "tumor": _render_tumor,
    "ulcer": _render_ulcer,
    "wheal": _render_wheal,
}
# Per label: (border irregularity, softness, eccentricity range).
_SHAPES: dict[str, tuple[float, float, tuple[float, float]]] = {
    "acne": (0.15, 0.3, (0.7, 1.0)),
    "alopecia": (0.12, 0.1, (0.7, 1.0)),
    "blister": (0.15, 0.3, (0.6, 1.0)),
    "crust": (0.3, 0.1, (0.6, 1.0)),
    "erythema": (0.3, 0.5, (0.5, 1.0)),
    "leukoderma": (0.35, 0.06, (0.5, 1.0)),
    "macula": (0.18, 0.12, (0.6, 1.0)),
    "tumor": (0.05, 0.08, (0.8, 1.0)),
    "ulcer": (0.15, 0.08, (0.6, 1.0)),
    "wheal": (0.2, 0.3, (0.6, 1.0)),
}


def _lesion(rng: np.random.Generator, label: str, size: int, share: float, skin: np.ndarray) -> _Lesion:
    irregular, softness, ecc_range = _SHAPES[label]
    radius = size * np.sqrt(share / np.pi)
    margin = min(0.5 * size, 0.6 * radius)
    centre = (float(rng.uniform(margin, size - margin)), float(rng.uniform(margin, size - margin)))
    ecc = rng.uniform(*ecc_range)
    env, d = _blob(rng, size, centre, radius / np.sqrt(ecc), irregular, softness, ecc)
    return _Lesion(centre, float(radius), env, d, _lesion_colour(rng, label), skin)


# ----------------------------------------------------------------------------- artefacts


_ANGLES = 72  # candidate directions (5 degree steps) when placing a pen stroke


def _ring_points(cx: float, cy: float, r: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate directions (radians) and the points at distance ``r`` from (cx, cy) along them."""
    theta = np.arange(_ANGLES) * (2 * np.pi / _ANGLES)
    return theta, cx + r * np.cos(theta), cy + r * np.sin(theta)


def _inside(x: np.ndarray, y: np.ndarray, size: int, pad: float) -> np.ndarray:
    return (x >= pad) & (x <= size - 1 - pad) & (y >= pad) & (y <= size - 1 - pad)


def _longest_run(ok: np.ndarray) -> tuple[int, int]:
    """(start, length) of the longest circular run of True in ``ok`` (length 0 when none)."""
    n = len(ok)
    if ok.all():
        return 0, n
    best, start, run = (0, 0), 0, 0
    for k in range(2 * n):  # twice round the circle catches runs that wrap
        if ok[k % n]:
            if run == 0:
                start = k
            run += 1
            if run > best[1]:
                best = (start % n, min(run, n))
        else:
            run = 0
    return best


def _pen_radius(les: _Lesion, size: int, pad: float, factor: float, min_r: float) -> tuple[float, int, int]:
    """A ring radius around the lesion and the (start, length) of its longest in-frame run.

    Starts at ``factor`` x the lesion radius (at least ``min_r`` px, so that a tiny lesion still gets
    a visible ring) and, while less than a quarter of the ring lies inside the frame, tries radii
    alternately smaller (down to 0.7 x the lesion radius) and larger (up to 1.8 x); without such a
    radius it takes the one with the longest in-frame run.
    """
    cx, cy = les.centre
    r0 = max(les.radius * factor, min_r)
    tries = [r0]
    for k in range(1, 12):
        tries += [r0 * 0.92**k, r0 * 1.08**k]
    lo, hi = max(min(0.7 * les.radius, r0), min_r), max(1.8 * les.radius, r0)
    best = (r0, 0, 0)
    for r in tries:
        if not lo <= r <= hi:
            continue
        _, x, y = _ring_points(cx, cy, r)
        start, length = _longest_run(_inside(x, y, size, pad))
        if length >= _ANGLES // 4:
            return r, start, length
        if length > best[2]:
            best = (r, start, length)
    return best


def _draw_pen(img: np.ndarray, rng: np.random.Generator, les: _Lesion) -> None:
    """Marker-ink circles, strokes or arrows a few px wide near the lesion (in place).

    Every stroke is placed inside the frame: an arc runs along the in-frame part of a ring around
    the lesion, a stroke or arrow points at the lesion from an in-frame direction and is cut at the
    frame, so ``pen_mark=1`` always means visible ink (lesions touching the border included).
    """
    size = img.shape[0]
    ink = _INKS[rng.choice(len(_INKS), p=_INK_WEIGHTS)] + rng.normal(0, 6, 3)
    width = max(2, round(size * rng.uniform(0.02, 0.035)))
    pad = width / 2 + 1
    layer = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(layer)
    cx, cy = les.centre
    for _ in range(int(rng.integers(1, 4))):
        r, run_start, run = _pen_radius(les, size, pad, rng.uniform(1.05, 1.45), 1.5 * width + 1)
        kind = rng.integers(3)
        step = 360.0 / _ANGLES
        if kind == 0:
            span = min(rng.uniform(200, 360), max(run - 1, 1) * step)
            room = max(run - 1, 1) * step - span
            start = run_start * step + rng.uniform(0, room)
            draw.arc((cx - r, cy - r, cx + r, cy + r), start, start + span, fill=255, width=width)
        else:
            theta, x, y = _ring_points(cx, cy, r)
            ok = _inside(x, y, size, pad)
            if not ok.any():  # a ring hugging a lesion that fills the frame: point from its run
                ok[run_start % _ANGLES] = True
            reach = np.where(ok, _reach(x, y, theta, size, pad), -np.inf)
            length = 0.3 * size
            roomy = reach >= 0.8 * length
            pick = int(rng.choice(np.flatnonzero(roomy))) if roomy.any() else int(reach.argmax())
            a = theta[pick] + rng.uniform(-0.5, 0.5) * np.deg2rad(step)
            tip = (cx + r * np.cos(a), cy + r * np.sin(a))
            # Outwards from the lesion where there is room, else inwards across its border.
            out = 1.0 if reach[pick] >= 0.5 * length else -1.0
            length = min(length, reach[pick]) if out > 0 else min(length, r)
            tail = (tip[0] + out * length * np.cos(a), tip[1] + out * length * np.sin(a))
            draw.line([tail, tip], fill=255, width=width)
            if kind == 2:  # arrow head
                for turn in (-0.5, 0.5):
                    back = a + turn
                    head = (tip[0] + 0.08 * size * np.cos(back), tip[1] + 0.08 * size * np.sin(back))
                    draw.line([tip, head], fill=255, width=width)
    alpha = np.asarray(layer, np.float32) / 255 * rng.uniform(0.85, 1.0)
    _paint(img, alpha, np.clip(ink, 0, 255))


def _reach(x: np.ndarray, y: np.ndarray, theta: np.ndarray, size: int, pad: float) -> np.ndarray:
    """How far one can go from each (x, y) outwards along ``theta`` before leaving the padded frame."""
    lo, hi = pad, size - 1 - pad
    dx, dy = np.cos(theta), np.sin(theta)
    with np.errstate(divide="ignore", invalid="ignore"):
        tx = np.where(dx > 1e-9, (hi - x) / dx, np.where(dx < -1e-9, (lo - x) / dx, np.inf))
        ty = np.where(dy > 1e-9, (hi - y) / dy, np.where(dy < -1e-9, (lo - y) / dy, np.inf))
    return np.minimum(tx, ty)


def _draw_ruler(img: np.ndarray, rng: np.random.Generator) -> None:
    """A pale ruler strip with tick marks along a random edge (in place)."""
    size = img.shape[0]
    depth = max(6, round(size * rng.uniform(0.08, 0.13)))
    colour = tuple(int(c) for c in rng.uniform([225, 220, 195], [245, 242, 230]))
    strip = Image.new("RGB", (size, depth), colour)
    draw = ImageDraw.Draw(strip)
    step = max(2.0, size / rng.uniform(15, 25))
    for k, x in enumerate(np.arange(rng.uniform(0, step), size, step)):
        tick = depth * (0.7 if k % 5 == 0 else 0.4)
        draw.line([(x, 0), (x, tick)], fill=(20, 20, 20), width=1)
    edge = int(rng.integers(4))
    strip_arr = np.asarray(strip.rotate(90, expand=True) if edge >= 2 else strip, np.float32)
    if edge == 0:
        img[:depth] = strip_arr
    elif edge == 1:
        img[-depth:] = strip_arr[::-1]
    elif edge == 2:
        img[:, :depth] = strip_arr
    else:
        img[:, -depth:] = strip_arr[:, ::-1]


def _edge_region(rng: np.random.Generator, size: int, share: float, edges: Sequence[int]) -> np.ndarray:
    """Soft mask (H,W in [0, 1]) of the frame within ``share`` of its side from each of ``edges``
    (0 top, 1 bottom, 2 left, 3 right), split evenly, with a wavy border (a fold, a limb's outline)."""
    yy, xx = _grid(size)
    dist = {0: yy, 1: size - 1 - yy, 2: xx, 3: size - 1 - xx}
    along = {0: xx, 1: xx, 2: yy, 3: yy}
    mask = np.zeros((size, size), np.float32)
    for edge in edges:
        depth = share / len(edges) * size
        phase, freq = rng.uniform(0, 2 * np.pi, 2), rng.uniform(1.0, 2.5, 2)
        wave = (
            np.sin(2 * np.pi * freq[0] * along[edge] / size + phase[0]) * 0.12
            + np.sin(2 * np.pi * freq[1] * along[edge] / size + phase[1]) * 0.06
        )
        border = depth * (1 + wave)
        mask = np.maximum(mask, np.clip(border - dist[edge] + 0.5, 0.0, 1.0))
    return mask


def _off_lesion(mask: np.ndarray, les: _Lesion) -> np.ndarray:
    """``mask`` kept off the lesion and a margin around it (drapes and backgrounds frame the lesion)."""
    return mask * np.clip((les.d - 1.25) / 0.1, 0.0, 1.0)


def _draw_drape(img: np.ndarray, rng: np.random.Generator, les: _Lesion, cfg: SynthConfig) -> None:
    """A blue, cyan or green cloth with soft folds entering from one edge (in place)."""
    size = img.shape[0]
    names = list(DRAPE_COLOURS)
    name = names[rng.integers(len(names))] if cfg.drape_colour == "mixed" else cfg.drape_colour
    colour = np.array(DRAPE_COLOURS[name], np.float32) * (1 + rng.normal(0, 0.05, 3)).astype(np.float32)
    mask = _off_lesion(_edge_region(rng, size, rng.uniform(*cfg.drape_share), [int(rng.integers(4))]), les)
    folds = 1 + 0.12 * _smooth_noise(rng, size, 5) + 0.02 * rng.standard_normal((size, size)).astype(np.float32)
    _paint(img, mask, colour * folds[..., None])


def _draw_background(img: np.ndarray, rng: np.random.Generator, les: _Lesion, cfg: SynthConfig) -> None:
    """Near-black background from one edge or two opposite ones (a limb photographed on black)."""
    size = img.shape[0]
    first = int(rng.integers(4))
    edges = [first, first ^ 1] if rng.random() < 0.5 else [first]
    mask = _off_lesion(_edge_region(rng, size, rng.uniform(*cfg.background_share), edges), les)
    black = rng.uniform(4, 22) + rng.normal(0, 2.0, (size, size, 1)).astype(np.float32)
    _paint(img, mask, np.repeat(black, 3, axis=2))


def _draw_hair(img: np.ndarray, rng: np.random.Generator, les: _Lesion) -> None:
    """Dark hairs (eyelashes, axillary or scalp hair): thin curved strokes across the frame (in place)."""
    size = img.shape[0]
    layer = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(layer)
    for _ in range(int(rng.integers(6, 25))):
        x, y = rng.uniform(0, size, 2)
        angle = rng.uniform(0, 2 * np.pi)
        points = []
        for _ in range(8):
            points.append((float(x), float(y)))
            angle += rng.normal(0, 0.25)
            step = size * rng.uniform(0.03, 0.06)
            x, y = x + step * np.cos(angle), y + step * np.sin(angle)
        draw.line(points, fill=int(rng.integers(160, 256)), width=max(1, round(size * rng.uniform(0.006, 0.012))))
    alpha = np.asarray(layer, np.float32)[..., None] / 255.0
    colour = np.array([40, 28, 20], np.float32) * rng.uniform(0.5, 1.2)
    img[:] = img * (1 - alpha) + colour * alpha


def _draw_lips(img: np.ndarray, rng: np.random.Generator, les: _Lesion) -> None:
    """Lips: a soft red-pink mucosa band at one edge of the frame (in place)."""
    size = img.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    side = int(rng.integers(4))
    dist = (yy, 1 - yy, xx, 1 - xx)[side]
    across = (xx, xx, yy, yy)[side]
    edge = rng.uniform(0.18, 0.32) * (1 - 1.5 * (across - 0.5) ** 2)
    mask = np.clip((edge - dist) / 0.03, 0, 1)[..., None]
    colour = np.array([176, 62, 74], np.float32) * rng.uniform(0.85, 1.1, 3)
    img[:] = img * (1 - mask) + colour * mask


def _draw_dark_lesion(img: np.ndarray, rng: np.random.Generator, les: _Lesion) -> None:
    """A very dark pigmented lesion: the lesion darkened towards black-brown (in place)."""
    env = les.env[..., None]
    img[:] = img * (1 - env * rng.uniform(0.7, 0.88))


def _draw_shadow(img: np.ndarray, rng: np.random.Generator, les: _Lesion) -> None:
    """A cast shadow: one side of the frame darkened behind a soft, slightly curved edge (in place)."""
    size = img.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, 2 * np.pi)
    proj = (xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle) + 0.1 * np.sin(6 * (xx + yy))
    dark = np.clip((proj - rng.uniform(0.05, 0.25)) / 0.08, 0, 1)[..., None]
    img[:] = img * (1 - dark * rng.uniform(0.45, 0.7))


_DISTRACT = {"hair": _draw_hair, "lips": _draw_lips, "dark_lesion": _draw_dark_lesion, "shadow": _draw_shadow}


def _draw_watermark(out: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A full-width strip along the bottom, dark with light text or white with dark text (the
    publisher's band of atlas photographs), drawn crisp on the finished photograph."""
    from PIL import ImageFont

    size = out.width
    depth = max(4, round(size * rng.uniform(0.05, 0.08)))
    dark = rng.random() < 0.5
    grey = rng.uniform(8, 30) if dark else rng.uniform(232, 250)
    band = tuple(int(np.clip(grey + t, 0, 255)) for t in rng.uniform(-3, 3, 3))
    ink = tuple(int(v) for v in np.full(3, rng.uniform(200, 240) if dark else rng.uniform(40, 90)))
    out = out.copy()
    draw = ImageDraw.Draw(out)
    draw.rectangle([0, size - depth, size - 1, size - 1], fill=band)
    text = _WATERMARK_TEXTS[rng.integers(len(_WATERMARK_TEXTS))]
    font = ImageFont.load_default(size=max(3, round(depth * 0.75)))
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    x = rng.uniform(0.02, max(0.03, 0.98 - (right - left) / size)) * size
    draw.text((x, size - depth / 2), text, fill=ink, font=font, anchor="lm")
    return out


def _illumination(rng: np.random.Generator, size: int) -> np.ndarray:
    """Low-frequency lighting: a tilted gradient, a vignette and soft unevenness."""
    yy, xx = _grid(size)
    a = rng.uniform(0, 2 * np.pi)
    tilt = ((xx - size / 2) * np.cos(a) + (yy - size / 2) * np.sin(a)) / size
    vignette = ((xx - size / 2) ** 2 + (yy - size / 2) ** 2) / (size / 2) ** 2
    uneven = _smooth_noise(rng, size, 4)
    return 1 + rng.uniform(0, 0.25) * tilt - rng.uniform(0, 0.12) * vignette + 0.03 * uneven


def _flash(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    size = img.shape[0]
    yy, xx = _grid(size)
    cx, cy = rng.uniform(0.25, 0.75, 2) * size
    sigma = size * rng.uniform(0.18, 0.32)
    spot = rng.uniform(0.55, 0.85) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
    washed = img.mean() + (img - img.mean()) * 0.85
    return washed + (250.0 - washed) * spot[..., None]


def _impulse_noise(img: np.ndarray, rng: np.random.Generator, share: float) -> None:
    """Salt and pepper on round(share * pixels) pixels, black:white = 3:1 (in place, uint8)."""
    h, w, _ = img.shape
    n = round(share * h * w)
    idx = rng.permutation(h * w)[:n]
    n_black = round(0.75 * n)
    flat = img.reshape(-1, 3)
    flat[idx[:n_black]] = 0
    flat[idx[n_black:]] = 255


# ----------------------------------------------------------------------------- one image


def _render(
    cfg: SynthConfig, label_idx: int, i: int, rates: dict[str, dict[str, float]]
) -> tuple[Image.Image, dict[str, object]]:
    """One image; its parts draw from separate streams so each knob moves only its own pixels."""
    label, size = LABELS[label_idx], cfg.size
    parts = [_rng(cfg.seed, _S_IMAGE, label_idx, i, p) for p in range(5)]
    content, pen, ruler, photo, noise = parts
    tone = int(np.searchsorted(np.cumsum(_tone_weights(cfg.skin_tones)), content.random(), side="right"))
    tone = min(tone, N_SKIN_TONES - 1)
    img = _skin(content, size, tone)
    share = content.uniform(*cfg.fov)
    les = _lesion(content, label, size, share, img.mean(axis=(0, 1)))
    shading = _RENDERERS[label](img, les, content) * _illumination(content, size)
    # the acquisition looks draw from their own streams only when asked for (default datasets keep their bytes)
    drape = _rng(cfg.seed, _S_IMAGE, label_idx, i, _P_DRAPE)
    has_drape = cfg.drape_rate > 0 and drape.random() < cfg.drape_rate
    if has_drape:
        _draw_drape(img, drape, les, cfg)
    background = _rng(cfg.seed, _S_IMAGE, label_idx, i, _P_BACKGROUND)
    has_background = cfg.dark_background_rate > 0 and background.random() < cfg.dark_background_rate
    if has_background:
        _draw_background(img, background, les, cfg)
    distractor = ""
    lookalike = _rng(cfg.seed, _S_IMAGE, label_idx, i, _P_DISTRACTOR)
    if cfg.distractor_rate > 0 and lookalike.random() < cfg.distractor_rate:
        distractor = str(cfg.distractors[int(lookalike.integers(len(cfg.distractors)))])
        _DISTRACT[distractor](img, lookalike, les)
    has_pen = pen.random() < rates["pen"][label]
    if has_pen:
        _draw_pen(img, pen, les)
    has_ruler = ruler.random() < rates["ruler"][label]
    if has_ruler:
        _draw_ruler(img, ruler)
    img *= shading[..., None]
    gamma = float(photo.uniform(*cfg.gamma))
    img = 255.0 * (np.clip(img, 0, 255) / 255.0) ** gamma
    has_flash = photo.random() < cfg.flash_rate
    if has_flash:
        img = _flash(img, photo)
    out = Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8), "RGB")
    if cfg.blur > 0:
        out = out.filter(ImageFilter.GaussianBlur(cfg.blur))
    if cfg.noise > 0:
        arr = np.array(out)
        _impulse_noise(arr, noise, cfg.noise)
        out = Image.fromarray(arr, "RGB")
    watermark = _rng(cfg.seed, _S_IMAGE, label_idx, i, _P_WATERMARK)
    has_watermark = cfg.watermark_rate > 0 and watermark.random() < cfg.watermark_rate
    if has_watermark:
        out = _draw_watermark(out, watermark)
    meta = {
        "pen_mark": int(has_pen),
        "ruler": int(has_ruler),
        "skin_tone": tone,
        "gamma": round(gamma, 4),
        "flash": int(has_flash),
        "lesion_share": round(float((les.env > 0.5).mean()), 4),
        "drape": int(has_drape),
        "dark_background": int(has_background),
        "watermark": int(has_watermark),
        "distractor": distractor,
    }
    return out, meta


def _encode(image: Image.Image, fmt: str, quality: int = JPEG_QUALITY) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpg":
        image.save(buf, format="JPEG", quality=quality)
    else:
        image.save(buf, format="PNG")
    return buf.getvalue()


def _near_copy(data: bytes, rng: np.random.Generator, fmt: str) -> bytes:
    """Re-encoded copy, slightly zoomed (crop then resize back) and brightened or darkened."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    size = image.width
    m = max(1, round(size * rng.uniform(0.005, 0.02)))
    zoomed = image.crop((m, m, size - m, size - m)).resize((size, size), Image.BILINEAR)
    arr = np.asarray(zoomed, np.float32) * rng.uniform(0.95, 1.05)
    near = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "RGB")
    return _encode(near, fmt, quality=int(rng.integers(80, 91)))


def _corrupt_bytes(kind: str, fmt: str) -> bytes:
    if kind == "zero_bytes":
        return b""
    if kind == "truncated":
        whole = _encode(Image.new("RGB", (64, 64), (200, 150, 120)), fmt)
        return whole[: len(whole) // 2]
    return b"this is not an image, only text with an image extension\n"


# ----------------------------------------------------------------------------- writer


class _Writer:
    """Writes files under out_dir and collects the metadata rows."""

    def __init__(self, out_dir: Path, fmt: str) -> None:
        self.out_dir, self.fmt = out_dir, fmt
        self.rows: list[dict[str, object]] = []
        self.next_index: dict[str, int] = {}

    def write(self, label: str, data: bytes, kind: str, meta: dict[str, object], duplicate_of: str = "") -> str:
        i = self.next_index.get(label, 0)
        self.next_index[label] = i + 1
        rel = f"{label}/{label}_{i:04d}.{self.fmt}"
        path = self.out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.rows.append({"path": rel, "label": label, "kind": kind, "duplicate_of": duplicate_of, **meta})
        return rel

    def save_meta(self) -> Path:
        path = self.out_dir / "synth_meta.csv"
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=META_COLUMNS, restval="")
            writer.writeheader()
            writer.writerows(self.rows)
        return path


def _prepare_out_dir(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"out_dir must be a new or empty directory: {out}")
    out.mkdir(parents=True, exist_ok=True)
    return out


@dataclass
class _Written:
    rel: str
    data: bytes
    meta: dict[str, object]


def _write_copies(writer: _Writer, cfg: SynthConfig, label: str, items: list[_Written]) -> dict[str, int]:
    """Exact and near copies of random images of the same label, appended after the originals."""
    label_idx = LABELS.index(label)
    n_dup = round(cfg.duplicate_rate * len(items))
    n_near = round(cfg.near_duplicate_rate * len(items))
    for j in range(n_dup):
        src = items[_rng(cfg.seed, _S_DUPLICATE, label_idx, j).integers(len(items))]
        writer.write(label, src.data, "duplicate", src.meta, duplicate_of=src.rel)
    for j in range(n_near):
        rng = _rng(cfg.seed, _S_NEAR, label_idx, j)
        src = items[rng.integers(len(items))]
        data = _near_copy(src.data, rng, cfg.fmt)
        writer.write(label, data, "near_duplicate", src.meta, duplicate_of=src.rel)
    return {"duplicates": n_dup, "near_duplicates": n_near}


def generate(out_dir: str | Path, cfg: SynthConfig = SynthConfig(), *, progress: bool = True) -> dict:
    """Write the synthetic ImageFolder and `synth_meta.csv`; return a summary.

    Summary keys: counts (original images per label), images, duplicates, near_duplicates,
    corrupt, total (files written), seed, size, elapsed_seconds, meta_path.
    """
    start = time.perf_counter()
    out = _prepare_out_dir(out_dir)
    counts = class_counts(cfg)
    rates = {"pen": _rate_table(cfg.pen_rate, "pen_rate"), "ruler": _rate_table(cfg.ruler_rate, "ruler_rate")}
    writer = _Writer(out, cfg.fmt)
    written: dict[str, list[_Written]] = {label: [] for label in counts}
    jobs = [(label, i) for label, n in counts.items() for i in range(n)]
    for label, i in tqdm(jobs, desc="synth", disable=not progress):
        image, meta = _render(cfg, LABELS.index(label), i, rates)
        data = _encode(image, cfg.fmt)
        written[label].append(_Written(writer.write(label, data, "image", meta), data, meta))
    extras = {"duplicates": 0, "near_duplicates": 0}
    for label, items in written.items():
        for key, n in _write_copies(writer, cfg, label, items).items():
            extras[key] += n
    for k in range(cfg.corrupt):
        kind = CORRUPT_KINDS[k % len(CORRUPT_KINDS)]
        writer.write(LABELS[k % len(LABELS)], _corrupt_bytes(kind, cfg.fmt), f"corrupt:{kind}", {})
    meta_path = writer.save_meta()
    return {
        "counts": counts,
        "images": sum(counts.values()),
        **extras,
        "corrupt": cfg.corrupt,
        "total": len(writer.rows),
        "seed": cfg.seed,
        "size": cfg.size,
        "elapsed_seconds": round(time.perf_counter() - start, 3),
        "meta_path": str(meta_path),
    }
