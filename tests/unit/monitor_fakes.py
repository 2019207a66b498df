"""Described image sets for the monitor's unit tests: random descriptors, embeddings and
predictions (no images, no model), shifted on demand."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ml.monitor.describe import DESCRIPTORS, Described

CLASSES = [f"class{i}" for i in range(5)]


def described(n: int, seed: int, shift: float = 0.0, embedding_shift: float = 0.0, dims: int = 24) -> Described:
    """``n`` labelled rows; ``shift`` moves every descriptor, ``embedding_shift`` the embeddings
    (in standard deviations). Width and height are constant, as for same-size images."""
    rng = np.random.default_rng(seed)
    table = pd.DataFrame({d: rng.normal(shift, 1.0, n) for d in DESCRIPTORS})
    table["width"], table["height"], table["aspect_ratio"] = 64, 64, 1.0
    probs = rng.dirichlet(np.ones(len(CLASSES)), n)
    table["pred_class"] = probs.argmax(1)
    table["max_prob"] = probs.max(1)
    table["entropy"] = -(probs * np.log(probs)).sum(1)
    table["label"] = [CLASSES[i] for i in rng.integers(0, len(CLASSES), n)]
    table["path"] = [f"/batch{seed}/{i}.jpg" for i in range(n)]
    return Described(table, rng.normal(embedding_shift, 1.0, (n, dims)), probs, CLASSES)
