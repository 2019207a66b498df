"""Per-image features of a manifest: decode status, hashes, colour/exposure statistics, confounder score.

The table feeds the Great Expectations suites (:mod:`ml.quality.validation`), curation (:mod:`ml.quality.curation`)
and drift monitoring. Pixel statistics are computed on a copy downscaled to at most
:data:`ANALYSIS_MAX_SIDE` pixels so that they are comparable across resolutions and cheap.

Documented thresholds
---------------------
Exposure (luma ``Y = 0.299 R + 0.587 G + 0.114 B`` in [0, 1]):
  * ``under``: mean luma < :data:`UNDER_EXPOSED_BRIGHTNESS` (0.30): the photo needs gamma correction;
  * ``washed_out``: more than :data:`WASHED_OUT_SHARE` (20 %) of pixels have luma >=
    :data:`NEAR_WHITE_LUMA` (0.95), i.e. flash burnt out the skin texture;
  * ``ok`` otherwise.

Confounder pixels (HSV, hue in degrees, S and V in [0, 1]), see :func:`confounder_mask`:
  * marker ink: ``S >= 0.35`` and ``V >= 0.15`` and hue in [65, 335] (green, cyan, blue, purple;
    JPEG chroma subsampling pulls thin purple strokes towards 330; in the magenta arc (300, 335]
    only stroke-thin structures count, as for dark strokes below, because vascular lesions are
    red-purple blobs there). Skin, blood, crusts and
    pigmented lesions have hues in (335, 360) U [0, 65) (red to yellow), so a saturated pixel
    outside that arc is almost never tissue; dark blue/purple lesions are the known exception;
  * thin dark strokes against skin (pen lines, ruler ticks): ``V < 0.25`` pixels that vanish under
    a binary opening with a square of side ``s = max(5, min(H, W) // 32)`` (made odd), i.e. dark
    structures thinner than ~3 % of the short side (dark lesions are blobs and survive it), whose background
    (grey closing of V over ``s + 2`` px, which erases the stroke) has ``V >= 0.45``: skin or a
    ruler strip, not the dark texture inside a crust or naevus. Known limitation: dark hair on
    light skin is a thin dark stroke too and is counted.
The confounder score is the share of such pixels outside the acquisition artefacts below; an
image is flagged (``confounder_flag``, the thesis's pen-mark confounder) when it exceeds the policy
threshold (``confounders.score_threshold`` in ``policies/validation.yaml``, default
:data:`DEFAULT_CONFOUNDER_THRESHOLD`).

Acquisition artefacts (clinical photographs: drapes, black backgrounds, publisher bands; rulers),
see :func:`acquisition_masks`. Each is a region of the frame, reported as its share of the image
(``*_share``) and flagged when it covers at least :data:`ARTEFACT_MIN_SHARE`; their pixels (and a
margin of one stroke side) do not count towards the pen-mark score, so blue drapes are not ink and
the fringe of a black background is not a dark stroke:
  * ``drape``: cool-hued pixels (hue in [65, 300], ``S >= 0.2``, ``V >= 0.15``) in connected regions
    that touch the frame and either hold a wide core (they survive an opening with a square of side
    ``max(7, min(H, W) // 10)``, about three times the widest pen stroke) or run along the frame for
    two stroke sides or more (a sliver of cloth; a pen line crossing the frame touches it over its width);
  * ``dark_background``: ``V < 0.2`` regions that touch the frame as drapes do and have a
    median ``V < 0.12`` (black cloth, the dermatoscope's vignette; dark lesions are rarely that black);
  * ``text_band``: a full-width strip at the top or bottom (2-20 % of the height) of rows whose pixels
    mostly (>= 50 %) of the strip's colour: within 0.1 luma of the edge rows' median and grey (chroma
    ``max - min`` of RGB < 0.12; HSV saturation means nothing on near-black), ending along a straight
    line (< 20 % of the strip's colour in the three rows after the next) and carrying text (0.2-45 % of its pixels are thin marks
    departing from its luma by > 0.25). A strip without text is excluded from the pen-mark score too
    but not flagged; an edge holding a ruler has no band;
  * ``ruler``: along an edge, within 15 % of the side, thin dark marks in at least 6 separate runs
    spaced regularly (coefficient of variation of the spacing < 0.35) over at least half the edge:
    tick marks. The region runs from the edge to the deepest tick plus a stroke side.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

from ml.data.duplicates import phash
from ml.data.images import inspect_image, path_problem
from ml.data.manifest import UNREAD_REASONS
from ml.quality.skin_tone import skin_tone

ANALYSIS_MAX_SIDE = 512
UNDER_EXPOSED_BRIGHTNESS = 0.30
NEAR_WHITE_LUMA = 0.95
WASHED_OUT_SHARE = 0.20
DEFAULT_CONFOUNDER_THRESHOLD = 0.002

INK_MIN_SATURATION = 0.35
INK_MIN_VALUE = 0.15
INK_HUE_RANGE = (65.0, 335.0)
MAGENTA_FROM = 300.0  # above this hue, ink must be stroke-thin (vascular lesions are magenta blobs)
DARK_STROKE_MAX_VALUE = 0.25
MARKER_WIDTH_MIN_SIDE = 128  # from this side up, a marker line (>= 2% of the frame) is 3+ px: wider than hair
STROKE_BACKGROUND_MIN_VALUE = 0.45

ACQUISITION_KINDS = ("ruler", "text_band", "drape", "dark_background")
"""Confounder kinds other than pen marks, reported separately (see the module docstring)."""
ARTEFACT_MIN_SHARE = 0.02
DRAPE_HUE_RANGE = (65.0, 300.0)
DRAPE_MIN_SATURATION = 0.2
BACKGROUND_MAX_VALUE = 0.2
BACKGROUND_MAX_MEDIAN_VALUE = 0.12
BAND_MAX_SHARE = 0.2
BAND_MAX_CHROMA = 0.12
RULER_MIN_TICKS = 6

PIXEL_COLUMNS = (
    "mean_r",
    "mean_g",
    "mean_b",
    "std_r",
    "std_g",
    "std_b",
    "brightness",
    "contrast",
    "saturation",
    "sharpness",
    "exposure",
    "confounder_score",
    *(f"{kind}_share" for kind in ACQUISITION_KINDS),
    "ita",
    "ita_group",
    "skin_share",
)
FLAG_COLUMNS = ("confounder_flag", *(f"{kind}_flag" for kind in ACQUISITION_KINDS))
"""Per-image flags of :func:`compute_features`: the pen-mark flag (``confounder_flag``) and one per
acquisition kind, each tested separately by validation."""
FEATURE_COLUMNS = (
    "width",
    "height",
    "mode",
    "format",
    "bytes",
    "decode_ok",
    "reason",
    "sha256",
    "pixel_sha256",
    "phash",
    *PIXEL_COLUMNS,
)
_MAX_CHUNK = 32


HSV = tuple[np.ndarray, np.ndarray, np.ndarray]
"""Hue, saturation, value of an image (:func:`hsv`): the mask functions take it precomputed to decode colour once."""


def hsv(rgb: np.ndarray) -> HSV:
    """Hue in degrees [0, 360), saturation and value in [0, 1] of a uint8 HxWx3 image."""
    x = rgb.astype(np.float32) / 255.0
    v = x.max(axis=2)
    chroma = v - x.min(axis=2)
    s = np.where(v > 0, chroma / np.maximum(v, 1e-6), 0.0)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    safe = np.maximum(chroma, 1e-6)
    h = np.select(
        [v == r, v == g],
        [((g - b) / safe) % 6.0, (b - r) / safe + 2.0],
        (r - g) / safe + 4.0,
    )
    return np.where(chroma > 0, h * 60.0, 0.0), s, v


def luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma in [0, 1] of a uint8 HxWx3 image."""
    return (rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)) / 255.0


def _stroke_side(rgb: np.ndarray) -> int:
    """Side of the square opening that separates strokes from blobs (odd, >= 5 px)."""
    return max(5, min(rgb.shape[:2]) // 32) | 1


def _opened(mask: np.ndarray, side: int) -> np.ndarray:
    """A binary opening of ``mask`` with a side x side square, as separable min/max filters (outside the
    frame is 0): the parts at least ``side`` wide."""
    u8 = mask.astype(np.uint8)
    return ndimage.maximum_filter(
        ndimage.minimum_filter(u8, size=side, mode="constant", cval=0), size=side, mode="constant", cval=0
    ).astype(bool)


def _thin(mask: np.ndarray, side: int) -> np.ndarray:
    """Pixels of ``mask`` in structures thinner than ``side`` (they vanish under the opening)."""
    return mask & ~_opened(mask, side)


def ink_mask(rgb: np.ndarray, hsv_: HSV | None = None) -> np.ndarray:
    """Pixels that look like saturated green/blue/purple marker ink (see module docstring).

    Hues in (MAGENTA_FROM, 335] count only in thin strokes: that arc holds purple ink pulled
    towards red by JPEG chroma subsampling, but also the red-purple of vascular lesions, which
    are blobs (on isic9 the unrestricted rule flagged 80% of vascular lesions as ink)."""
    h, s, v = hsv(rgb) if hsv_ is None else hsv_
    lo, hi = INK_HUE_RANGE
    saturated = (s >= INK_MIN_SATURATION) & (v >= INK_MIN_VALUE)
    core = saturated & (h >= lo) & (h <= MAGENTA_FROM)
    magenta = saturated & (h > MAGENTA_FROM) & (h <= hi)
    # thinness is judged on the whole saturated red-to-magenta region, so that the magenta rim
    # of a red lesion (a thin ring in hue, but part of a blob) is not read as a stroke
    reddish = saturated & ((h > MAGENTA_FROM) | (h < lo))
    return core | (magenta & _thin(reddish, _stroke_side(rgb)))


def thin_dark_mask(rgb: np.ndarray, hsv_: HSV | None = None) -> np.ndarray:
    """Near-black pixels of structures thinner than the opening lying on a bright background
    (pen lines, ruler ticks on skin); see the module docstring."""
    value = (hsv(rgb) if hsv_ is None else hsv_)[2]
    dark = value < DARK_STROKE_MAX_VALUE
    side = _stroke_side(rgb)
    thin = _thin(dark, side)
    background = ndimage.grey_closing(value, size=(side + 2, side + 2))
    return thin & (background >= STROKE_BACKGROUND_MIN_VALUE)


def stroke_mask(rgb: np.ndarray, hsv_: HSV | None = None, dark: np.ndarray | None = None) -> np.ndarray:
    """Boolean HxW mask of every marker-ink and thin dark stroke pixel (acquisition artefacts included);
    ``hsv_`` and ``dark`` (:func:`thin_dark_mask`) are computed when not given."""
    hsv_ = hsv(rgb) if hsv_ is None else hsv_
    return ink_mask(rgb, hsv_) | (thin_dark_mask(rgb, hsv_) if dark is None else dark)


def confounder_mask(
    rgb: np.ndarray, masks: dict[str, np.ndarray] | None = None, hsv_: HSV | None = None, dark: np.ndarray | None = None
) -> np.ndarray:
    """Boolean HxW mask of pen-mark pixels: :func:`stroke_mask` outside the acquisition artefacts
    (``masks``, from :func:`acquisition_masks` when not given) grown by one stroke side."""
    masks = acquisition_masks(rgb) if masks is None else masks
    hsv_ = hsv(rgb) if hsv_ is None else hsv_
    dark = thin_dark_mask(rgb, hsv_) if dark is None else dark
    strokes = ink_mask(rgb, hsv_) | _marker_wide(dark, _stroke_side(rgb))
    return strokes & ~_grow(np.logical_or.reduce(list(masks.values())), _stroke_side(rgb))


def _marker_wide(dark: np.ndarray, side: int) -> np.ndarray:
    """The thin dark pixels near a core at least half a stroke side wide: marker lines, not hairs.

    A marker line is 2-3.5% of the frame wide; hair (eyelashes, scalp, axillary) about 1%. On the
    synthetic distractors (ml.data.synth, 60 images of hair) hair raised the pen flag on 77% of
    the images before this rule; black marker keeps its core. Where hairs cross, the core is a few
    pixels, below the flag's share. Below :data:`MARKER_WIDTH_MIN_SIDE` px a marker line is itself
    1-2 px wide, as thin as a hair: there every thin dark stroke still counts."""
    if not dark.any() or min(dark.shape) < MARKER_WIDTH_MIN_SIDE:
        return dark
    core_side = max(3, side // 2) | 1
    return dark & _grow(_opened(dark, core_side), core_side)


def _grow(mask: np.ndarray, side: int) -> np.ndarray:
    """``mask`` dilated by a square of ``side`` (separable max filter)."""
    return ndimage.maximum_filter(mask.astype(np.uint8), size=side).astype(bool) if mask.any() else mask


def _frame_contact(lab: np.ndarray) -> np.ndarray:
    """Per label of ``lab``, how many frame pixels it holds (0 for the background label 0)."""
    edge = np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])
    touching = np.bincount(edge, minlength=lab.max() + 1)
    touching[0] = 0
    return touching


def _wide_border_regions(mask: np.ndarray, side: int, contact: int) -> np.ndarray:
    """The parts of ``mask`` that touch the frame and are wide (they survive an opening with a ``side``
    square: separable min/max filters; taken with the pixels of ``mask`` within ``side // 2`` of them, its
    fringe), plus the thin parts that reach the frame: those of such a wide region, and thin regions of their
    own that run along the frame for ``contact`` pixels or more (a sliver of cloth; a stroke crossing the
    frame touches it over its width only). A thin stroke that touches a wide region inside the frame stays
    out (but for the fringe): a pen mark drawn over a drape is still a pen mark."""
    if not mask.any():
        return mask
    lab, _ = ndimage.label(mask)
    core = ndimage.maximum_filter(ndimage.minimum_filter(mask.astype(np.uint8), size=side), size=side) > 0
    wide = np.zeros(lab.max() + 1, dtype=bool)
    wide[np.unique(lab[core])] = True
    wide[0] = False
    framed = np.isin(lab, np.flatnonzero((_frame_contact(lab) > 0) & wide))
    grown = _grow(core & framed, side // 2 | 1) & mask
    rest, _ = ndimage.label(mask & ~grown)
    touching = _frame_contact(rest)
    of_framed = np.zeros(rest.max() + 1, dtype=bool)
    of_framed[np.unique(rest[framed & (rest > 0)])] = True
    reach = (touching >= contact) | ((touching > 0) & of_framed)
    return grown | np.isin(rest, np.flatnonzero(reach))


def _wide_side(rgb: np.ndarray) -> int:
    return max(7, min(rgb.shape[:2]) // 10) | 1


def _frame_regions(mask: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """:func:`_wide_border_regions` with the documented sides: a wide core of :func:`_wide_side`, or a
    contact with the frame of two stroke sides."""
    return _wide_border_regions(mask, _wide_side(rgb), 2 * _stroke_side(rgb))


def drape_mask(rgb: np.ndarray, hsv_: HSV | None = None) -> np.ndarray:
    """Wide cool-hued regions touching the frame (surgical drapes, cloth backgrounds)."""
    h, s, v = hsv(rgb) if hsv_ is None else hsv_
    lo, hi = DRAPE_HUE_RANGE
    cool = (s >= DRAPE_MIN_SATURATION) & (v >= INK_MIN_VALUE) & (h >= lo) & (h <= hi)
    return _frame_regions(cool, rgb)


def dark_background_mask(rgb: np.ndarray, hsv_: HSV | None = None) -> np.ndarray:
    """Wide near-black regions touching the frame (black backgrounds, dermatoscope vignettes)."""
    v = (hsv(rgb) if hsv_ is None else hsv_)[2]
    regions = _frame_regions(v < BACKGROUND_MAX_VALUE, rgb)
    if not regions.any():
        return regions
    lab, _ = ndimage.label(regions)
    ids = np.arange(1, lab.max() + 1)
    medians = np.array(ndimage.median(v, lab, ids)) if len(ids) else np.array([])
    return np.isin(lab, ids[medians < BACKGROUND_MAX_MEDIAN_VALUE])


def _band_rows(y: np.ndarray, c: np.ndarray, side: int) -> tuple[int, bool]:
    """Depth (rows) of the uniform strip at the top of ``y``/``c`` (luma, chroma) and whether it carries
    text (thin marks of another luma); depth 0 when there is none (see the module docstring)."""
    n = y.shape[0]
    ref = float(np.median(y[:2]))
    # the strip's colour, fixed by the edge rows (so that text rows stay strip rows): grey, near that luma
    near = (np.abs(y - ref) <= 0.1) & (c < BAND_MAX_CHROMA)
    uniform = near.mean(axis=1) >= 0.5
    depth = int(np.argmin(uniform)) if not uniform.all() else n
    if depth < max(3, round(0.02 * n)) or depth > BAND_MAX_SHARE * n:
        return 0, False
    # a strip ends along a straight line: its colour is (nearly) gone two rows further in, whereas a
    # background's wavy border, or a gradual change of light, leaves it in the next rows
    if float(near[depth + 1 : depth + 4].mean()) >= 0.2:
        return 0, False
    band_y = np.median(y[:depth])
    text = float(_thin(np.abs(y[:depth] - band_y) > 0.25, side).mean())
    return depth, 0.002 <= text <= 0.45


def band_masks(rgb: np.ndarray, ruler: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(any uniform strip at the top or bottom, the strips among them that carry text); an edge
    holding a ruler (``ruler``, from :func:`ruler_mask`) has no band."""
    y, c = luma(rgb), np.ptp(rgb, axis=2).astype(np.float32) / 255.0
    strip, text = np.zeros(y.shape, bool), np.zeros(y.shape, bool)
    side = _stroke_side(rgb)
    for flip in (False, True):
        edge = -1 if flip else 0
        if ruler is not None and ruler[edge].all():
            continue
        depth, has_text = _band_rows(y[::-1] if flip else y, c[::-1] if flip else c, side)
        rows = slice(y.shape[0] - depth, None) if flip else slice(0, depth)
        if depth:
            strip[rows] = True
            text[rows] = has_text
    return strip, text


def ruler_mask(rgb: np.ndarray, dark: np.ndarray | None = None) -> np.ndarray:
    """Edge strips holding regularly spaced thin dark tick marks (see the module docstring)."""
    marks = thin_dark_mask(rgb) if dark is None else dark
    out = np.zeros(marks.shape, bool)
    side = _stroke_side(rgb)
    for k in range(4):  # rotate each edge to the top
        m = np.rot90(marks, k)
        depth = max(4, round(0.15 * m.shape[0]))
        strip = m[:depth]
        runs = np.flatnonzero(np.diff(np.concatenate([[0], strip.any(axis=0).astype(np.int8)])) == 1)
        if len(runs) < RULER_MIN_TICKS or runs[-1] - runs[0] < 0.5 * m.shape[1]:
            continue
        gaps = np.diff(runs)
        if gaps.std() / gaps.mean() >= 0.35:
            continue
        deepest = int(np.flatnonzero(strip.any(axis=1)).max())
        region = np.zeros(m.shape, bool)
        region[: min(m.shape[0], deepest + 1 + side)] = True
        out |= np.rot90(region, -k)
    return out


def acquisition_masks(
    rgb: np.ndarray, hsv_: HSV | None = None, dark: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Boolean HxW region of each kind of :data:`ACQUISITION_KINDS`, plus ``plain_band`` (uniform strips
    without text: not a kind of its own, but not pen marks either)."""
    hsv_ = hsv(rgb) if hsv_ is None else hsv_
    ruler = ruler_mask(rgb, thin_dark_mask(rgb, hsv_) if dark is None else dark)
    strip, text = band_masks(rgb, ruler)
    background = dark_background_mask(rgb, hsv_) & ~strip  # a dark band is a band, whatever it carries
    return {
        "ruler": ruler,
        "text_band": text,
        "drape": drape_mask(rgb, hsv_),
        "dark_background": background,
        "plain_band": strip & ~text,
    }


def exposure_class(rgb: np.ndarray) -> str:
    """'under', 'washed_out' or 'ok' by the documented luma thresholds."""
    y = luma(rgb)
    if float(y.mean()) < UNDER_EXPOSED_BRIGHTNESS:
        return "under"
    if float((y >= NEAR_WHITE_LUMA).mean()) > WASHED_OUT_SHARE:
        return "washed_out"
    return "ok"


def pixel_features(rgb: np.ndarray) -> dict[str, Any]:
    """Colour, exposure, sharpness and confounder statistics of a uint8 HxWx3 image."""
    x = rgb.reshape(-1, 3).astype(np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0)
    y = luma(rgb)
    hsv_ = hsv(rgb)
    return {
        "mean_r": mean[0],
        "mean_g": mean[1],
        "mean_b": mean[2],
        "std_r": std[0],
        "std_g": std[1],
        "std_b": std[2],
        "brightness": float(y.mean()),
        "contrast": float(y.std()),
        "saturation": float(hsv_[1].mean()),
        "sharpness": float(ndimage.laplace(y.astype(np.float64) * 255.0).var()),
        "exposure": exposure_class(rgb),
        **confounder_features(rgb, hsv_),
        **skin_tone(rgb),
    }


def confounder_features(rgb: np.ndarray, hsv_: HSV | None = None) -> dict[str, float]:
    """``confounder_score`` (pen-mark pixel share) and ``<kind>_share`` of each acquisition kind."""
    hsv_ = hsv(rgb) if hsv_ is None else hsv_
    dark = thin_dark_mask(rgb, hsv_)
    masks = acquisition_masks(rgb, hsv_, dark)
    out = {"confounder_score": float(confounder_mask(rgb, masks, hsv_, dark).mean())}
    return out | {f"{kind}_share": float(masks[kind].mean()) for kind in ACQUISITION_KINDS}


def analysis_array(img: Image.Image) -> np.ndarray:
    """The uint8 RGB array features are computed on: ``img`` downscaled to ANALYSIS_MAX_SIDE."""
    if max(img.size) > ANALYSIS_MAX_SIDE:
        img = img.copy()
        img.thumbnail((ANALYSIS_MAX_SIDE, ANALYSIS_MAX_SIDE), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def _empty_row(reason: str, data: bytes | None = None) -> dict[str, Any]:
    """The feature row of a file that gives no image: only ``bytes`` and ``sha256`` (when read) and ``reason``."""
    row: dict[str, Any] = {
        "width": np.nan,
        "height": np.nan,
        "mode": None,
        "format": None,
        "bytes": np.nan if data is None else len(data),
        "decode_ok": False,
        "reason": reason,
        "sha256": None if data is None else hashlib.sha256(data).hexdigest(),
        "pixel_sha256": None,
        "phash": None,
    }
    return row | dict.fromkeys(PIXEL_COLUMNS, np.nan) | {"exposure": None, "ita_group": None}


def image_features(path: str | Path, reduced: bool = True) -> dict[str, Any]:
    """All features of one image file; all but ``bytes``, ``sha256`` and ``reason`` are NaN/None
    when it does not decode (those too when it is not a readable regular file, which is never opened).

    ``decode_ok`` is true when the file decodes, even in a format outside the allowed set (the
    integrity suite checks ``format`` separately); ``mode`` is the original mode before RGB conversion;
    ``width``/``height`` are the displayed size (after the EXIF orientation) of the stored image.

    The file is decoded once. With ``reduced`` (the default) a JPEG larger than :data:`ANALYSIS_MAX_SIDE`
    is decoded at reduced size by DCT scaling (:func:`ml.data.images.inspect_image`): the pixel statistics
    are computed on a copy at most ANALYSIS_MAX_SIDE px anyway, and the pHash on 32x32 px; ``sha256`` is
    of the bytes, and the decode still reads every coefficient (truncation is found as before).
    """
    data = Path(path).read_bytes() if path_problem(path) is None else None
    check, img = inspect_image(path if data is None else data, max_side=ANALYSIS_MAX_SIDE if reduced else None)
    row = _empty_row(check.reason, data)
    if img is None:
        return row
    row.update(width=check.width, height=check.height, mode=check.mode, format=check.format)
    row.update(decode_ok=True, reason="", phash=phash(img), pixel_sha256=pixel_digest(img))
    row.update(pixel_features(analysis_array(img)))
    return row


def pixel_digest(img) -> str:
    """SHA-256 of an image's decoded pixels (mode, size and raster): the same picture saved with
    other metadata (EXIF, ICC, comments) or by another encoder run gives the same digest."""
    h = hashlib.sha256(f"{img.mode}:{img.size[0]}x{img.size[1]}:".encode())
    h.update(img.tobytes())
    return h.hexdigest()


def _features_of(paths: Sequence[str]) -> list[dict[str, Any]]:
    """Features of several files (the unit of work shipped to a process or Ray task)."""
    return [image_features(p) for p in paths]


def _chunks(items: Sequence[str], size: int) -> list[list[str]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def _progress(iterable: Iterable[Any], total: int, enabled: bool) -> Iterable[Any]:
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc="features", unit="chunk")


def _run_local(paths: list[str], workers: int, progress: bool) -> list[dict[str, Any]]:
    """Serial for ``workers <= 1``, else a spawn-based process pool (safe in threaded hosts)."""
    chunks = _chunks(paths, int(np.clip(len(paths) // (4 * max(workers, 1)), 1, _MAX_CHUNK)))
    if workers <= 1:
        results = _progress(map(_features_of, chunks), len(chunks), progress)
        return [row for chunk in results for row in chunk]
    # the workers leave Ctrl-C to this process, which cancels what is queued: one message, not a
    # traceback per worker, and no wait for the chunks that had not started
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=_QuietSpawnContext())
    try:
        with _interrupts_held_while_workers_start():  # the pool starts its workers on the first submit
            mapped = pool.map(_features_of, chunks)
        results = _progress(mapped, len(chunks), progress)
        return [row for chunk in results for row in chunk]
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)


@contextmanager
def _interrupts_held_while_workers_start():
    """A Ctrl-C while worker processes are started is held back and raised once they are: never
    lost. (Ignoring SIGINT for the whole start would discard a Ctrl-C landing in it; blocking it
    does not reach spawned workers, whose mask is reset.) The workers themselves are born with
    Ctrl-C ignored (:class:`_QuietSpawnProcess`). Only the main thread may change handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if held:
        raise KeyboardInterrupt


class _QuietSpawnProcess(multiprocessing.context.SpawnProcess):
    """A spawned worker that ignores Ctrl-C from its first instruction: SIGINT is ignored in this
    process for the fork and exec alone (an ignored signal is inherited across exec, and Python
    keeps it ignored), so a Ctrl-C sent to the terminal's process group reaches only this
    process. A worker that set the ignore itself (an initializer) could still be interrupted
    while importing: it printed a traceback, and the pool broke under the CPython 3.11 race of
    gh-107219 (an InvalidStateError traceback from the pool's manager thread). The ignore lasts
    the few milliseconds of one process start; the main thread only may change handlers."""

    def start(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            super().start()
            return
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            super().start()
        finally:
            signal.signal(signal.SIGINT, previous)


class _QuietSpawnContext(multiprocessing.context.SpawnContext):
    Process = _QuietSpawnProcess


def _run_ray(paths: list[str], address: str, progress: bool) -> list[dict[str, Any]]:
    """One Ray task per chunk of paths; connects to ``address`` unless Ray is already initialised."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, log_to_driver=False)
    try:
        task = ray.remote(_features_of)
        refs = [task.remote(chunk) for chunk in _chunks(paths, _MAX_CHUNK)]
        results = _progress((ray.get(ref) for ref in refs), len(refs), progress)
        return [row for chunk in results for row in chunk]
    finally:
        if started:
            ray.shutdown()


def compute_features(
    records: pd.DataFrame,
    workers: int = 2,
    progress: bool = False,
    ray_address: str | None = None,
    confounder_threshold: float = DEFAULT_CONFOUNDER_THRESHOLD,
) -> pd.DataFrame:
    """One feature row per record, keeping the records' own columns (label, split, metadata).

    Images are read from ``local_path`` when present, else ``path``. Feature columns replace
    same-named record columns (e.g. ``bytes``, ``sha256``). ``confounder_flag`` is
    ``confounder_score > confounder_threshold``. Rows of a manifest's ``bad`` table (e.g.
    :meth:`ml.data.manifest.Manifest.all_files`) keep their ``reason`` in ``left_out`` ('' for
    records): validation counts them as not usable; those with a reason in
    :data:`ml.data.manifest.UNREAD_REASONS` (outside the root, broken links...) are not opened.
    Each acquisition kind has its flag ``<kind>_flag`` (``<kind>_share >=`` :data:`ARTEFACT_MIN_SHARE`),
    and ``confounder_kinds`` names the kinds flagged in each row ('pen_mark' for ``confounder_flag``).
    """
    src = records["local_path"] if "local_path" in records else records["path"]
    left_out = records["reason"].fillna("").astype(str) if "reason" in records else pd.Series("", index=records.index)
    unread = left_out.isin(UNREAD_REASONS).to_numpy()
    paths = [str(p) for p in src[~unread]]
    distinct = list(dict.fromkeys(paths))  # a file listed many times is decoded once
    if ray_address is not None:
        found = _run_ray(distinct, ray_address, progress)
    else:
        found = _run_local(distinct, workers, progress)
    by_path = dict(zip(distinct, found, strict=True))
    read = iter(by_path[p] for p in paths)
    rows = [_empty_row(reason) if skip else dict(next(read)) for skip, reason in zip(unread, left_out, strict=True)]
    feats = pd.DataFrame(rows, index=records.index, columns=list(FEATURE_COLUMNS))
    out = pd.concat([records.drop(columns=[c for c in FEATURE_COLUMNS if c in records]), feats], axis=1)
    out["left_out"] = left_out
    out["confounder_flag"] = out["confounder_score"].fillna(0.0) > confounder_threshold
    for kind in ACQUISITION_KINDS:
        out[f"{kind}_flag"] = out[f"{kind}_share"].fillna(0.0) >= ARTEFACT_MIN_SHARE
    out["confounder_kinds"] = confounder_kinds(out)
    return out.reset_index(drop=True)


def confounder_kinds(features: pd.DataFrame) -> pd.Series:
    """Per row, the confounder kinds flagged ('pen_mark', then :data:`ACQUISITION_KINDS`), comma-separated."""
    names = ["pen_mark", *ACQUISITION_KINDS]
    flags = features[list(FLAG_COLUMNS)].fillna(False).astype(bool).to_numpy()
    return pd.Series(
        [",".join(n for n, f in zip(names, row, strict=True) if f) for row in flags], index=features.index, dtype=object
    )


def usable_mask(features: pd.DataFrame) -> pd.Series:
    """Rows that will be used: decoded and not left out by the manifest (``left_out`` empty or absent)."""
    ok = features["decode_ok"].fillna(False).astype(bool)
    if "left_out" not in features:
        return ok
    return ok & (features["left_out"].fillna("").astype(str) == "")


FEATURES_REVISION = 8  # 6: pixel_sha256; 7: ita, ita_group, skin_share; 8: hair-thin strokes are not pen marks
"""Bump when a feature's definition changes, so that cached tables are recomputed (3: magenta
hues count as ink only in thin strokes; 4: displayed width/height, ``left_out``; 5: acquisition
artefacts reported by kind and left out of the pen-mark score, reduced JPEG decode)."""


def rows_digest(records: pd.DataFrame) -> str:
    """sha256 of every row a feature table covers: path, label, split, content digest and the
    manifest's reason for a file left out. The dataset version hashes only the usable records,
    so a bad file added later, or a CSV with other bad rows, has the same version; this digest
    tells them apart."""
    cols = [c for c in ("path", "label", "split", "sha256", "bytes", "reason") if c in records]
    table = records[cols].astype(str).to_csv(index=False).encode()
    return hashlib.sha256(table).hexdigest()


def features_path(version: str, cache_dir: str | Path, records: pd.DataFrame | None = None) -> Path:
    """Where the features of dataset ``version`` are cached (Parquet keeps dtypes and missing
    values), keyed by the dataset version, :data:`FEATURES_REVISION` and, given the records, the
    :func:`rows_digest` of every file they cover (bad ones too)."""
    rows = "" if records is None else f"-{rows_digest(records)[:16]}"
    return Path(cache_dir) / version / f"features-r{FEATURES_REVISION}{rows}.parquet"


def compute_features_cached(records: pd.DataFrame, version: str, cache_dir: str | Path, **kwargs: Any) -> pd.DataFrame:
    """Features of dataset ``version``: read from :func:`features_path` (the same version and the
    same rows, bad files included) or computed (``kwargs`` go to :func:`compute_features`) and
    written atomically."""
    path = features_path(version, cache_dir, records)
    if path.is_file():
        return pd.read_parquet(path)
    feats = compute_features(records, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    feats.to_parquet(tmp, index=False)
    tmp.replace(path)
    return feats
