"""Prediction sets with a coverage guarantee, and when to refer an image to a person.

Split conformal prediction, class-conditional (Mondrian): the nonconformity of an image for
label ``c`` is ``1 - p_c`` (the hinge score on the calibrated probabilities), and a label enters
the image's set when its conformal p-value against the calibration images *of that label*
exceeds ``alpha``. For every class with calibration images, the set then contains the true label
with probability at least ``1 - alpha`` (exchangeability, Vovk's Mondrian guarantee). A marginal
(pooled) guarantee would allow a minority class to be covered far less often: on long-tailed
data that is the class that matters.

The p-values and sets come from crepes (``ConformalClassifier`` fitted with the true labels as
Mondrian bins, p-values without smoothing so that a set is a deterministic function of the
image). What a model stores is the calibration scores per class (:meth:`MondrianSets.to_dict`),
so a served model rebuilds the same classifier and gives the same sets.

A class with ``n`` calibration images can exclude a label only when ``1 / (n + 1) <= alpha``:
below ``1/alpha - 1`` images (9 at alpha 0.1) the class is in every set, the honest answer
when the data cannot support a guarantee for it.

:func:`refer` is the abstention rule: a set larger than ``max_set_size`` or one that holds a
label the policy names as must-not-miss sends the image to a person.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class MondrianSets:
    """Class-conditional split-conformal sets at error level ``alpha`` over ``classes``."""

    classes: list[str]
    alpha: float
    scores: dict[str, list[float]] = field(default_factory=dict)  # calibration nonconformity per class

    @classmethod
    def fit(cls, probs: np.ndarray, labels: np.ndarray, classes: Sequence[str], alpha: float) -> MondrianSets:
        """Calibrate on ``probs`` (N, C; the model's calibrated probabilities) and true ``labels``."""
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
        probs = np.asarray(probs, dtype=np.float64)
        labels = np.asarray(labels, dtype=np.int64)
        own = 1.0 - probs[np.arange(len(labels)), labels]
        scores = {name: sorted(float(s) for s in own[labels == c]) for c, name in enumerate(classes)}
        return cls(list(classes), float(alpha), scores)

    def p_values(self, probs: np.ndarray) -> np.ndarray:
        """(N, C) conformal p-values of each label for each image (crepes, no smoothing)."""
        from crepes import ConformalClassifier

        probs = np.asarray(probs, dtype=np.float64)
        n, out = len(probs), np.ones((len(probs), len(self.classes)))
        if n == 0:
            return out
        alphas, bins = [], []
        for name in self.classes:
            alphas += self.scores.get(name, [])
            bins += [name] * len(self.scores.get(name, []))
        if not alphas:
            return out  # nothing calibrated: every label stays possible
        cc = ConformalClassifier().fit(np.asarray(alphas), bins=np.asarray(bins, dtype=object))
        for c, name in enumerate(self.classes):
            if self.scores.get(name):
                cc_bins = np.full(n, name, dtype=object)
                out[:, c] = cc.predict_p(1.0 - probs, cc_bins, smoothing=False)[:, c]
        return out

    def sets(self, probs: np.ndarray) -> np.ndarray:
        """(N, C) booleans: label ``c`` is in image ``i``'s set."""
        return self.p_values(probs) > self.alpha

    def to_dict(self) -> dict[str, Any]:
        return {"method": "mondrian_split_conformal", "alpha": self.alpha, "scores": self.scores}

    @classmethod
    def from_dict(cls, classes: Sequence[str], stored: Mapping[str, Any]) -> MondrianSets:
        return cls(list(classes), float(stored["alpha"]), {k: list(v) for k, v in stored["scores"].items()})


def refer(sets: np.ndarray, classes: Sequence[str], max_set_size: int, must_not_miss: Iterable[str]) -> np.ndarray:
    """(N,) booleans: refer image ``i`` when its set has more than ``max_set_size`` labels, is
    empty, or holds a must-not-miss label (names the model does not know are ignored)."""
    sets = np.asarray(sets, dtype=bool)
    watch = np.array([name in set(must_not_miss) for name in classes], dtype=bool)
    size = sets.sum(axis=1)
    return (size > max_set_size) | (size == 0) | (sets & watch).any(axis=1)


def coverage(sets: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per class: how often the set held the true label, the mean set size and the support."""
    sets = np.asarray(sets, dtype=bool)
    labels = np.asarray(labels, dtype=np.int64)
    hit = sets[np.arange(len(labels)), labels] if len(labels) else np.zeros(0, bool)
    out = {}
    for c, name in enumerate(classes):
        mine = labels == c
        if mine.any():
            out[name] = {
                "coverage": float(hit[mine].mean()),
                "mean_set_size": float(sets[mine].sum(axis=1).mean()),
                "n": int(mine.sum()),
            }
    return out
