"""Linear probe: how much class information a frozen backbone's pooled features carry.

A standardised, class-balanced logistic regression on the pooled features of the training images,
scored (balanced accuracy) on the test images. It is the floor a fine-tuning recipe must clear: if
fine-tuning all layers ends below the probe, the recipe has damaged the pretrained features.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.preprocessing import StandardScaler

from ml.train.transforms import Stats, to_float_batch

Arrays = tuple[np.ndarray, np.ndarray]


def pooled_features(model: torch.nn.Module, images: np.ndarray, stats: Stats, batch: int = 64) -> np.ndarray:
    """``model.features`` (the pooled penultimate layer of ml.train.models' backbones) of uint8
    NHWC ``images`` normalised with ``stats``, in eval mode without gradients: (N, D) float32."""
    model.eval()
    with torch.no_grad():
        return torch.cat(
            [
                model.features(to_float_batch(torch.from_numpy(images[i : i + batch]), *stats)).float()
                for i in range(0, len(images), batch)
            ]
        ).numpy()


def linear_probe(train: Arrays, test: Arrays, c: float = 0.01) -> float:
    """Balanced accuracy on ``test`` of a logistic regression fitted on ``train`` ((features, labels)
    pairs); features are standardised with the training statistics, classes weighted by frequency."""
    scaler = StandardScaler().fit(train[0])
    clf = LogisticRegression(C=c, max_iter=2000, class_weight="balanced").fit(scaler.transform(train[0]), train[1])
    return float(balanced_accuracy_score(test[1], clf.predict(scaler.transform(test[0]))))


def pretrained_features(images: np.ndarray, arch: str, batch: int = 64) -> np.ndarray:
    """Pooled features of uint8 NHWC ``images`` from ``arch``'s packaged ImageNet weights (no
    download), normalised as those weights were trained: (N, D) float32."""
    from ml.train.config import arch_family
    from ml.train.models import build_model
    from ml.train.transforms import PRETRAINED_STATS

    model = build_model(arch, 1, weights="imagenet")
    return pooled_features(
        model, np.array(images), PRETRAINED_STATS[arch_family(arch)], batch
    )  # a writable copy of a memmap
