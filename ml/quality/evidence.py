"""The evidence of a confounder flag: the flagged image with the pixels that raised the flag drawn
over it, so that a person checks a flag in a second (the validation summary's gallery).

The masks are the ones the features were computed from (:func:`ml.quality.features.acquisition_masks`
and :func:`~ml.quality.features.confounder_mask`), on the same analysis copy of the image."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from PIL import Image

from ml.quality.label_review import thumbnail_uri

# the colour each kind's pixels are painted in (RGB), and the gallery's caption order
COLOURS: dict[str, tuple[int, int, int]] = {
    "pen_mark": (255, 0, 0),
    "ruler": (255, 215, 0),
    "text_band": (255, 0, 255),
    "drape": (0, 255, 255),
    "dark_background": (0, 110, 255),
}
THUMB = 192


@dataclass(frozen=True)
class Evidence:
    """One flagged image: its path, the kinds it was flagged for, and a PNG ``data:`` URI of the
    image with each kind's mask painted over it (empty when the file could not be read again)."""

    path: str
    kinds: tuple[str, ...]
    image: str


def overlay(rgb: np.ndarray, masks: dict[str, np.ndarray], alpha: float = 0.6) -> np.ndarray:
    """``rgb`` (uint8 HxWx3) with each mask painted in its kind's colour (:data:`COLOURS`)."""
    out = rgb.astype(np.float32)
    for kind, mask in masks.items():
        if kind in COLOURS and mask.any():
            out[mask] = (1 - alpha) * out[mask] + alpha * np.array(COLOURS[kind], np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def kind_masks(rgb: np.ndarray) -> dict[str, np.ndarray]:
    """Every confounder kind's mask of a uint8 analysis image, pen marks included."""
    from ml.quality.features import acquisition_masks, confounder_mask, hsv, thin_dark_mask

    hsv_ = hsv(rgb)
    dark = thin_dark_mask(rgb, hsv_)
    masks = acquisition_masks(rgb, hsv_, dark)
    pen = confounder_mask(rgb, masks, hsv_, dark)
    return {"pen_mark": pen, **{k: v for k, v in masks.items() if k in COLOURS}}


def gallery(features: pd.DataFrame, limit: int = 24) -> list[Evidence]:
    """The first ``limit`` flagged usable images (by their ``confounder_kinds``), each drawn with the
    masks of the kinds it was flagged for."""
    from ml.data.images import inspect_image
    from ml.quality.features import ANALYSIS_MAX_SIDE, analysis_array

    if "confounder_kinds" not in features:
        return []
    flagged = features[features["confounder_kinds"].fillna("").astype(str) != ""].head(limit)
    out = []
    for row in flagged.itertuples(index=False):
        kinds = tuple(k for k in str(row.confounder_kinds).split(",") if k)
        local = getattr(row, "local_path", None) or row.path
        _, img = inspect_image(str(local), max_side=ANALYSIS_MAX_SIDE)  # the decode the features read
        if img is None:  # a file changed or gone since it was read: the flag stands, its picture does not
            out.append(Evidence(str(row.path), kinds, ""))
            continue
        rgb = analysis_array(img)
        masks = {k: m for k, m in kind_masks(rgb).items() if k in kinds}
        picture = Image.fromarray(overlay(rgb, masks))
        picture.thumbnail((THUMB, THUMB))
        out.append(Evidence(str(row.path), kinds, thumbnail_uri(np.asarray(picture))))
    return out
