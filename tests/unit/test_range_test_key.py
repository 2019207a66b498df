"""What a stored LR range test may stand for: its key changes with anything the test runs on or
with, and not with the settings only the fit after it uses."""

from __future__ import annotations

import numpy as np
import pytest

from ml.data.cache import ImageCache
from ml.train.config import LRFindConfig, TrainConfig
from ml.train.recipes import range_test_key


def _cache(**changed) -> ImageCache:
    fields = dict(
        images=np.zeros((6, 8, 8, 3), np.uint8),
        labels=np.array([0, 1, 0, 1, 0, 1]),
        splits=np.array(["train", "train", "train", "train", "val", "val"]),
        classes=["a", "b"],
        version="v1",
        size=8,
    )
    return ImageCache(**{**fields, **changed})


BASE = TrainConfig(arch="resnet18", schedule="adam", batch_size=16, seed=0, amp=False)
KEY = range_test_key(_cache(), BASE, LRFindConfig())


@pytest.mark.parametrize(
    "cache",
    [
        _cache(version="v2"),  # another dataset version
        _cache(labels=np.array([1, 1, 0, 1, 0, 1])),  # a relabelled image
        _cache(splits=np.array(["train", "train", "train", "val", "val", "train"])),  # another split
        _cache(size=16),
    ],
    ids=["version", "label", "split", "size"],
)
def test_other_training_images_give_another_key(cache):
    assert range_test_key(cache, BASE, LRFindConfig()) != KEY


@pytest.mark.parametrize(
    "changed",
    [
        {"arch": "resnet34"},
        {"weights": "imagenet"},
        {"schedule": "sgd"},
        {"batch_size": 32},
        {"weight_decay": 0.0},
        {"seed": 1},
        {"weighted_sampler": True},
    ],
)
def test_a_setting_the_test_runs_with_gives_another_key(changed):
    assert range_test_key(_cache(), BASE.model_copy(update=changed), LRFindConfig()) != KEY


def test_another_ramp_gives_another_key_but_asking_for_a_fresh_one_does_not():
    assert range_test_key(_cache(), BASE, LRFindConfig(num_iter=50)) != KEY
    assert range_test_key(_cache(), BASE, LRFindConfig(start_lr=1e-6)) != KEY
    assert range_test_key(_cache(), BASE, LRFindConfig(reuse=False)) == KEY  # it stores under the same key


@pytest.mark.parametrize(
    "changed", [{"epochs": 9}, {"lr": 0.01}, {"snapshots": 0}, {"tta": True}, {"progress": False}, {"num_workers": 2}]
)
def test_settings_only_the_fit_uses_keep_the_key(changed):
    assert range_test_key(_cache(), BASE.model_copy(update=changed), LRFindConfig()) == KEY
