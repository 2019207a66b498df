"""Skin tone per image: the Individual Typology Angle (ITA) of the skin around the lesion.

ITA = arctan((L* - 50) / b*) in degrees, from the CIELAB lightness L* and yellow-blue b* of skin
(Chardon et al. 1991), binned into the usual six groups (Del Bino et al. 2006): very light > 55,
light 41-55, intermediate 28-41, tan 10-28, brown -30-10, dark < -30. The sRGB -> CIELAB conversion
is the standard one (IEC 61966-2-1 linearisation, D65 white), written out here: no maintained
package in the stack provides it (scikit-image is not a dependency; Pillow's LAB is D50).

Skin pixels are the frame less the lesion (:func:`ml.quality.curation.lesion_mask`), less the
very dark (vignette, hair, shadows: L* < 15) and the very bright (glare: L* > 95). The tone is
the median L* and b* over them. Dermoscopy images show little skin: with fewer than
:data:`MIN_SKIN_SHARE` of the pixels left, the estimate is ``unknown`` rather than a guess.
"""

from __future__ import annotations

import math

import numpy as np

GROUPS: tuple[tuple[float, str], ...] = (
    (55.0, "very_light"),
    (41.0, "light"),
    (28.0, "intermediate"),
    (10.0, "tan"),
    (-30.0, "brown"),
    (-math.inf, "dark"),
)
"""(lower ITA bound, group), lightest first: a value above the bound belongs to the group."""
GROUP_NAMES: tuple[str, ...] = tuple(name for _, name in GROUPS)
UNKNOWN = "unknown"
MIN_SKIN_SHARE = 0.1
_D65 = np.array([0.95047, 1.0, 1.08883])
_RGB_TO_XYZ = np.array(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]]
)


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of uint8 (or 0..255 float) sRGB values, shape (..., 3) -> (..., 3)."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _RGB_TO_XYZ.T / _D65
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def ita(lightness: float, b: float) -> float:
    """The Individual Typology Angle (degrees) of a CIELAB L* and b*."""
    return math.degrees(math.atan2(lightness - 50.0, b))


def group(angle: float) -> str:
    """The ITA group of an angle (:data:`GROUPS`); ``unknown`` for NaN."""
    if math.isnan(angle):
        return UNKNOWN
    return next(name for bound, name in GROUPS if angle > bound)


def skin_tone(rgb: np.ndarray) -> dict[str, float | str]:
    """``ita``, ``ita_group`` (its group) and ``skin_share`` (the share of the frame read as skin)
    of a uint8 HxWx3 image; ``ita`` NaN and group ``unknown`` when too little skin shows."""
    from ml.quality.curation import lesion_mask

    lab = srgb_to_lab(rgb)
    skin = ~lesion_mask(rgb) & (lab[..., 0] >= 15) & (lab[..., 0] <= 95)
    share = float(skin.mean())
    if share < MIN_SKIN_SHARE:
        return {"ita": math.nan, "ita_group": UNKNOWN, "skin_share": share}
    angle = ita(float(np.median(lab[..., 0][skin])), float(np.median(lab[..., 2][skin])))
    return {"ita": angle, "ita_group": group(angle), "skin_share": share}


def groups_of(images: np.ndarray) -> np.ndarray:
    """The ITA group of each uint8 NHWC image (what the gate reads its group rule on)."""
    return np.array([skin_tone(np.asarray(img))["ita_group"] for img in images], dtype=object)
