"""`predict --explain`'s overlays: one per image, at its size, for the class asked, the model untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ml.interpret.explain import explain
from ml.train.models import build_model


def test_one_overlay_per_image_and_the_model_is_left_as_it_was():
    torch.manual_seed(0)
    model = build_model("resnet18", 3).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = np.random.default_rng(0).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    norm = ((0.5,) * 3, (0.25,) * 3)
    overlays = explain(model, "resnet18", norm, images, [0, 2, 1], batch_size=2)
    assert [o.shape for o in overlays] == [(64, 64, 3)] * 3 and all(o.dtype == np.uint8 for o in overlays)
    assert not np.array_equal(overlays[0], images[0])  # a heat map was laid over it
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ValueError, match="2 targets for 3 images"):
        explain(model, "resnet18", norm, images, [0, 1])
