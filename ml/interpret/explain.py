"""Grad-CAM overlays for predictions (``skinflow predict --explain``): where the model looked for
the label it gave, per image, with the interpretation flow's own Grad-CAM layer and overlay."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import nn

from ml.interpret.cam import cam_overlay, fp32_eval_copy, gradcam_maps, inputs
from ml.train.models import cam_target_layer
from ml.train.transforms import Stats


def explain(
    module: nn.Module, arch: str, norm: Stats, images: np.ndarray, targets: Sequence[int], batch_size: int = 16
) -> list[np.ndarray]:
    """One uint8 RGB overlay per uint8 NHWC image (at the model's input size) of the Grad-CAM map
    for its class in ``targets``; ``module`` itself is not changed (an fp32 copy is explained)."""
    if len(images) != len(targets):
        raise ValueError(f"{len(targets)} targets for {len(images)} images")
    model = fp32_eval_copy(module)
    layer = cam_target_layer(model, arch, input_size=images.shape[1])
    out: list[np.ndarray] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        maps = gradcam_maps(model, layer, inputs(chunk, norm), list(targets[start : start + batch_size]))
        out += [cam_overlay(img, cam) for img, cam in zip(chunk, maps, strict=True)]
    return out
