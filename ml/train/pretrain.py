"""Pretraining a backbone on a source set, for offline transfer (``weights=<path>``)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from ml.storage import Storage
from ml.train.batches import Arrays
from ml.train.config import TrainConfig
from ml.train.loop import TrainResult, fit
from ml.train.models import save_checkpoint_file


def pretrain(
    images: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    cfg: TrainConfig,
    out_path: str | os.PathLike,
    val_frac: float = 1 / 6,
) -> TrainResult:
    """Fit a backbone on a source set (seeded stratified hold-out) and save it with
    `save_checkpoint_file`, so that ``weights=<out_path>`` transfers it (the head is skipped)."""
    val_mask = _stratified_holdout(labels, val_frac, cfg.seed)
    return pretrain_backbone(
        (images[~val_mask], labels[~val_mask]), (images[val_mask], labels[val_mask]), classes, cfg, str(out_path)
    )


def pretrain_backbone(
    train: Arrays, val: Arrays, classes: list[str], cfg: TrainConfig, out: str, storage: Storage | None = None
) -> TrainResult:
    """Fit on a source set's train/val arrays and store ``{"arch","classes","state_dict"}`` at
    ``out`` (a path or ``s3://``), loadable later as ``weights=out`` (``weights_only=True``; the
    head is skipped on transfer)."""
    result = fit(train, val, classes, cfg)
    with tempfile.TemporaryDirectory() as tmp:
        local = save_checkpoint_file(result.model, cfg.arch, classes, Path(tmp) / "backbone.pt")
        (storage or Storage()).put_file(local, out)
    return result


def _stratified_holdout(labels: np.ndarray, frac: float, seed: int) -> np.ndarray:
    """Boolean mask with about `frac` of each class (at least one, never all) held out."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        take = min(max(1, round(frac * len(idx))), len(idx) - 1)
        mask[idx[:take]] = True
    return mask
