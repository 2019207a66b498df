"""The packaged ImageNet weights are what they claim: on real dermoscopy images (isic9), a linear
probe on their pooled features beats one on random-init features by a wide margin."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ml.data.cache import resize_crop
from ml.data.images import load_rgb
from ml.train.models import build_model
from ml.train.probe import linear_probe, pooled_features
from ml.train.transforms import PRETRAINED_STATS

ISIC9 = Path(__file__).parents[2].parent / "shared/data/isic9"
SIZE = 64
TRAIN_PER_CLASS = 40  # 360 train images; the probe is scored on all 118 shipped test images
RANDOM_SEEDS = (0, 1, 2)  # random-init probes vary a lot with the seed (0.24-0.40 over six seeds)
# Measured at 64 px, C=0.01: pretrained 0.484; random init 0.354, 0.282, 0.238 (mean 0.291); chance 0.11.
MARGIN = 0.10

pytestmark = pytest.mark.skipif(not ISIC9.is_dir(), reason=f"real-data test: {ISIC9} is absent")


def _images(split: str, per_class: int | None) -> tuple[np.ndarray, np.ndarray]:
    classes = sorted(p.name for p in (ISIC9 / "train").iterdir() if p.is_dir())
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((ISIC9 / split / name).glob("*.jpg"))[:per_class]:
            images.append(np.asarray(resize_crop(load_rgb(path), SIZE)))
            labels.append(label)
    return np.stack(images), np.array(labels)


def test_imagenet_efficientnet_lite0_features_beat_random_init_in_a_linear_probe() -> None:
    (x_train, y_train), (x_test, y_test) = _images("train", TRAIN_PER_CLASS), _images("test", None)
    assert len(np.unique(y_train)) == len(np.unique(y_test)) == 9

    def score(model: torch.nn.Module) -> float:
        stats = PRETRAINED_STATS["efficientnet_lite"]
        return linear_probe(
            (pooled_features(model, x_train, stats), y_train), (pooled_features(model, x_test, stats), y_test)
        )

    pretrained = score(build_model("efficientnet_lite0", 9, weights="imagenet"))
    random_init = []
    for seed in RANDOM_SEEDS:
        torch.manual_seed(seed)
        random_init.append(score(build_model("efficientnet_lite0", 9)))
    print(f"linear probe balanced accuracy at {SIZE} px: pretrained {pretrained:.3f}, random init {random_init}")
    assert pretrained >= np.mean(random_init) + MARGIN, (pretrained, random_init)
    assert pretrained > max(random_init), (pretrained, random_init)
