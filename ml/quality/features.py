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
The confounder score is the share of such pixels; an image is flagged when it exceeds the policy
threshold (``confounders.score_threshold`` in ``policies/validation.yaml``, default
:data:`DEFAULT_CONFOUNDER_THRESHOLD`).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

from ml.data.duplicates import phash
from ml.data.images import BadImageError, check_image, load_rgb, path_problem
from ml.data.manifest import UNREAD_REASONS

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
STROKE_BACKGROUND_MIN_VALUE = 0.45

PIXEL_COLUMNS = (
    "mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b",
    "brightness", "contrast", "saturation", "sharpness", "exposure", "confounder_score",
)  # fmt: skip
FEATURE_COLUMNS = (
    "width", "height", "mode", "format", "bytes", "decode_ok", "reason", "sha256", "phash", *PIXEL_COLUMNS,
)  # fmt: skip
_MAX_CHUNK = 32


def hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def _thin(mask: np.ndarray, side: int) -> np.ndarray:
    """Pixels of ``mask`` in structures thinner than ``side`` (they vanish under the opening)."""
    return mask & ~ndimage.binary_opening(mask, structure=np.ones((side, side), dtype=bool))


def ink_mask(rgb: np.ndarray) -> np.ndarray:
    """Pixels that look like saturated green/blue/purple marker ink (see module docstring).

    Hues in (MAGENTA_FROM, 335] count only in thin strokes: that arc holds purple ink pulled
    towards red by JPEG chroma subsampling, but also the red-purple of vascular lesions, which
    are blobs (on isic9 the unrestricted rule flagged 80% of vascular lesions as ink)."""
    h, s, v = hsv(rgb)
    lo, hi = INK_HUE_RANGE
    saturated = (s >= INK_MIN_SATURATION) & (v >= INK_MIN_VALUE)
    core = saturated & (h >= lo) & (h <= MAGENTA_FROM)
    magenta = saturated & (h > MAGENTA_FROM) & (h <= hi)
    # thinness is judged on the whole saturated red-to-magenta region, so that the magenta rim
    # of a red lesion (a thin ring in hue, but part of a blob) is not read as a stroke
    reddish = saturated & ((h > MAGENTA_FROM) | (h < lo))
    return core | (magenta & _thin(reddish, _stroke_side(rgb)))


def thin_dark_mask(rgb: np.ndarray) -> np.ndarray:
    """Near-black pixels of structures thinner than the opening lying on a bright background
    (pen lines, ruler ticks on skin); see the module docstring."""
    value = hsv(rgb)[2]
    dark = value < DARK_STROKE_MAX_VALUE
    side = _stroke_side(rgb)
    thin = _thin(dark, side)
    background = ndimage.grey_closing(value, size=(side + 2, side + 2))
    return thin & (background >= STROKE_BACKGROUND_MIN_VALUE)


def confounder_mask(rgb: np.ndarray) -> np.ndarray:
    """Boolean HxW mask of marker-ink and thin dark stroke pixels."""
    return ink_mask(rgb) | thin_dark_mask(rgb)


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
    return {
        "mean_r": mean[0], "mean_g": mean[1], "mean_b": mean[2],
        "std_r": std[0], "std_g": std[1], "std_b": std[2],
        "brightness": float(y.mean()),
        "contrast": float(y.std()),
        "saturation": float(hsv(rgb)[1].mean()),
        "sharpness": float(ndimage.laplace(y.astype(np.float64) * 255.0).var()),
        "exposure": exposure_class(rgb),
        "confounder_score": float(confounder_mask(rgb).mean()),
    }  # fmt: skip


def analysis_array(img: Image.Image) -> np.ndarray:
    """The uint8 RGB array features are computed on: ``img`` downscaled to ANALYSIS_MAX_SIDE."""
    if max(img.size) > ANALYSIS_MAX_SIDE:
        img = img.copy()
        img.thumbnail((ANALYSIS_MAX_SIDE, ANALYSIS_MAX_SIDE), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def _empty_row(reason: str, data: bytes | None = None) -> dict[str, Any]:
    """The feature row of a file that gives no image: only ``bytes`` and ``sha256`` (when read) and ``reason``."""
    row: dict[str, Any] = {
        "width": np.nan, "height": np.nan, "mode": None, "format": None,
        "bytes": np.nan if data is None else len(data), "decode_ok": False, "reason": reason,
        "sha256": None if data is None else hashlib.sha256(data).hexdigest(), "phash": None,
    }  # fmt: skip
    return row | dict.fromkeys(PIXEL_COLUMNS, np.nan) | {"exposure": None}


def image_features(path: str | Path) -> dict[str, Any]:
    """All features of one image file; all but ``bytes``, ``sha256`` and ``reason`` are NaN/None
    when it does not decode (those too when it is not a readable regular file, which is never opened).

    ``decode_ok`` is true when the file decodes, even in a format outside the allowed set (the
    integrity suite checks ``format`` separately); ``mode`` is the original mode before RGB conversion;
    ``width``/``height`` are the displayed size (after the EXIF orientation).
    """
    data = Path(path).read_bytes() if path_problem(path) is None else None
    check = check_image(path if data is None else data)
    row = _empty_row(check.reason, data)
    if not (check.ok or check.reason == "unsupported_format"):
        return row
    try:
        img = load_rgb(data)
    except BadImageError as exc:
        return row | {"reason": exc.reason}
    row.update(width=img.width, height=img.height, mode=check.mode, format=check.format)
    row.update(decode_ok=True, reason="", phash=phash(img))
    row.update(pixel_features(analysis_array(img)))
    return row


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
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        results = _progress(pool.map(_features_of, chunks), len(chunks), progress)
        return [row for chunk in results for row in chunk]


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
    """
    src = records["local_path"] if "local_path" in records else records["path"]
    left_out = records["reason"].fillna("").astype(str) if "reason" in records else pd.Series("", index=records.index)
    unread = left_out.isin(UNREAD_REASONS).to_numpy()
    paths = [str(p) for p in src[~unread]]
    if ray_address is not None:
        rows = _run_ray(paths, ray_address, progress)
    else:
        rows = _run_local(paths, workers, progress)
    read = iter(rows)
    rows = [_empty_row(reason) if skip else next(read) for skip, reason in zip(unread, left_out, strict=True)]
    feats = pd.DataFrame(rows, index=records.index, columns=list(FEATURE_COLUMNS))
    out = pd.concat([records.drop(columns=[c for c in FEATURE_COLUMNS if c in records]), feats], axis=1)
    out["left_out"] = left_out
    out["confounder_flag"] = out["confounder_score"].fillna(0.0) > confounder_threshold
    return out.reset_index(drop=True)


def usable_mask(features: pd.DataFrame) -> pd.Series:
    """Rows that will be used: decoded and not left out by the manifest (``left_out`` empty or absent)."""
    ok = features["decode_ok"].fillna(False).astype(bool)
    if "left_out" not in features:
        return ok
    return ok & (features["left_out"].fillna("").astype(str) == "")


FEATURES_REVISION = 4
"""Bump when a feature's definition changes, so that cached tables are recomputed (3: magenta
hues count as ink only in thin strokes; 4: displayed width/height, ``left_out``)."""


def features_path(version: str, cache_dir: str | Path) -> Path:
    """Where the features of dataset ``version`` are cached (Parquet keeps dtypes and missing
    values), keyed by the dataset version and :data:`FEATURES_REVISION`."""
    return Path(cache_dir) / version / f"features-r{FEATURES_REVISION}.parquet"


def compute_features_cached(
    records: pd.DataFrame, version: str, cache_dir: str | Path, **kwargs: Any
) -> pd.DataFrame:
    """Features of dataset ``version``: read from :func:`features_path` or computed (``kwargs`` go to
    :func:`compute_features`) and written atomically."""
    path = features_path(version, cache_dir)
    if path.is_file():
        return pd.read_parquet(path)
    feats = compute_features(records, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    feats.to_parquet(tmp, index=False)
    tmp.replace(path)
    return feats
