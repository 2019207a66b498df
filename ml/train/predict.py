"""Prediction from uint8 NHWC arrays: softmax probabilities, TTA views, snapshot ensembles."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ml.train.models import is_channels_last
from ml.train.precision import autocast
from ml.train.transforms import TTA_VIEWS, Stats, to_float_batch, tta_view

StateDict = dict[str, torch.Tensor]


def _batches(images: np.ndarray, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, len(images), batch_size):
        yield torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))


@torch.no_grad()
def predict_proba(
    model: nn.Module,
    images: np.ndarray,
    norm: Stats,
    device: torch.device,
    batch_size: int = 128,
    amp_dtype: torch.dtype | None = None,
    tta: bool = False,
) -> np.ndarray:
    """Softmax probabilities (N, C) for uint8 NHWC `images`; with `tta` the mean over views."""
    was_training = model.training
    model.eval()
    views = TTA_VIEWS if tta else ("identity",)
    channels_last = is_channels_last(model)  # inputs in the model's memory format
    out = []
    for batch in _batches(images, batch_size):
        x = to_float_batch(batch.to(device), *norm, channels_last=channels_last)
        probs = torch.zeros(())
        for view in views:
            with autocast(device, amp_dtype):
                logits = model(tta_view(x, view))
            probs = probs + torch.softmax(logits.float(), dim=1).cpu()
        out.append(probs / len(views))
    model.train(was_training)
    return torch.cat(out).double().numpy()


def ensemble_proba(
    model: nn.Module,
    snapshots: Sequence[StateDict],
    images: np.ndarray,
    norm: Stats,
    device: torch.device,
    batch_size: int = 128,
    amp_dtype: torch.dtype | None = None,
    tta: bool = False,
) -> np.ndarray:
    """Snapshot ensemble: mean of each snapshot's softmax (`model` itself is left untouched)."""
    if not snapshots:
        raise ValueError("no snapshots to ensemble")
    work = copy.deepcopy(model)
    total = 0.0
    for state in snapshots:
        work.load_state_dict(state)
        total = total + predict_proba(work, images, norm, device, batch_size, amp_dtype, tta)
    return total / len(snapshots)
