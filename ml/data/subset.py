"""Seeded per-class subsets (a bounded training budget that keeps every class)."""

from __future__ import annotations

import numpy as np


def per_class_subset(labels: np.ndarray, per_class: int | None, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``per_class`` items of each label, drawn without replacement
    with ``seed`` (all items of a smaller class); ``None``: every index."""
    labels = np.asarray(labels)
    if per_class is None:
        return np.arange(len(labels))
    if per_class < 1:
        raise ValueError(f"per_class must be positive, got {per_class}")
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(keep)) if keep else np.arange(0)
