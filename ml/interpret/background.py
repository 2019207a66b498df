"""The thesis's background test: cover the image centre (where the lesion is) with a black patch
about a third of the side, on images the model predicts correctly and confidently, and measure how
often the prediction changes and how far the true class's probability falls."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def centre_patch(size: int, frac: float = 1 / 3) -> tuple[slice, slice]:
    """Row and column slices of the centred square of side ``round(frac * size)`` (at least 1)."""
    if not 0 < frac <= 1:
        raise ValueError(f"frac must lie in (0, 1], got {frac}")
    side = max(1, int(round(frac * size)))
    start = (size - side) // 2
    return slice(start, start + side), slice(start, start + side)


def occlude_centre(images: np.ndarray, frac: float = 1 / 3) -> np.ndarray:
    """A copy of uint8 NHWC ``images`` with the centre patch (:func:`centre_patch`) set black."""
    if images.ndim != 4 or images.shape[1] != images.shape[2]:
        raise ValueError(f"expected square (N,H,W,C) images, got {images.shape}")
    out = np.array(images, copy=True)
    rows, cols = centre_patch(images.shape[1], frac)
    out[:, rows, cols] = 0
    return out


def background_test(
    predict: Callable[[np.ndarray], np.ndarray],
    images: np.ndarray,
    labels: np.ndarray,
    confidence: float = 0.7,
    frac: float = 1 / 3,
) -> dict[str, Any]:
    """Occlusion of the centre on the images ``predict`` (uint8 images -> probabilities) gets
    right with probability >= ``confidence``. Returns counts, ``change_rate`` (share whose top-1
    changes), the true-class probability before/after and its mean ``prob_drop``, and the indices
    (into ``images``) of the images tested with their predictions (None figures when none qualify)."""
    labels = np.asarray(labels)
    probs = predict(images)
    p_true = probs[np.arange(len(labels)), labels]
    chosen = np.flatnonzero((probs.argmax(1) == labels) & (p_true >= confidence))
    out: dict[str, Any] = {
        "n_images": int(len(labels)),
        "n_confident": int(len(chosen)),
        "confidence": confidence,
        "patch_frac": frac,
        "indices": chosen.tolist(),
    }
    if len(chosen) == 0:
        return {
            **out,
            "change_rate": None,
            "prob_before": None,
            "prob_after": None,
            "prob_drop": None,
            "pred_after": [],
        }
    after = predict(occlude_centre(images[chosen], frac))
    pred_after = after.argmax(1)
    before_p, after_p = p_true[chosen], after[np.arange(len(chosen)), labels[chosen]]
    return {
        **out,
        "change_rate": float((pred_after != labels[chosen]).mean()),
        "prob_before": float(before_p.mean()),
        "prob_after": float(after_p.mean()),
        "prob_drop": float((before_p - after_p).mean()),
        "pred_after": pred_after.tolist(),
        "p_true_after": after_p.tolist(),
    }
