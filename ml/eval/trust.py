"""What a model needs to say how far to trust each answer: a temperature (calibrated
probabilities), class-conditional conformal sets and the refer rule of ``policies/prediction.yaml``.

:meth:`Trust.fit` runs once at the end of training on the validation split (images the weights
never trained on). The result travels in the model's ``model_meta.json`` (``trust``), so the run's
evaluation, the gate, the served pyfunc and ``skinflow predict`` all apply the same numbers
(:meth:`Trust.apply`). The temperature and the conformal scores are fitted on the same
validation images: one scalar fitted on them barely changes their exchangeability with new
images, and a long-tailed set has too few minority images to split twice. The coverage test
(tests/unit/test_conformal.py) measures the guarantee under exactly this procedure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from ml.eval.calibration import Calibration, apply_temperature
from ml.eval.conformal import MondrianSets, refer
from ml.policies import build_policy

# the columns a served answer adds after the class probabilities (ml.tracking.serving, ml.predict.table)
SET_COLUMN, REFER_COLUMN = "prediction_set", "refer"


@dataclass(frozen=True)
class PredictionPolicy:
    """Thresholds of prediction sets and referral (see ``policies/prediction.yaml``)."""

    alpha: float = 0.1
    max_set_size: int = 1
    must_not_miss: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must lie in (0, 1), got {self.alpha}")
        if self.max_set_size < 1:
            raise ValueError(f"max_set_size must be at least 1, got {self.max_set_size}")
        object.__setattr__(self, "must_not_miss", tuple(str(x) for x in self.must_not_miss or ()))

    @classmethod
    def load(cls, path: str | Path | None = None) -> PredictionPolicy:
        """The policy at ``path`` (default: ``prediction.yaml`` in the settings' ``policies_dir``)."""
        return build_policy("prediction", path, cls, [f.name for f in fields(cls)])


@dataclass(frozen=True)
class Trust:
    """A fitted temperature, the conformal sets on the calibrated probabilities and the refer rule."""

    calibration: Calibration
    sets: MondrianSets
    max_set_size: int
    must_not_miss: tuple[str, ...] = field(default=())

    @classmethod
    def fit(cls, probs: np.ndarray, labels: np.ndarray, classes: Sequence[str], policy: PredictionPolicy) -> Trust:
        """Fit on a model's probabilities of its validation images and their labels."""
        calibration = Calibration.fit(probs, labels)
        calibrated = apply_temperature(probs, calibration.temperature)
        sets = MondrianSets.fit(calibrated, labels, classes, policy.alpha)
        return cls(calibration, sets, policy.max_set_size, tuple(policy.must_not_miss))

    @property
    def classes(self) -> list[str]:
        return self.sets.classes

    def calibrated(self, probs: np.ndarray) -> np.ndarray:
        return apply_temperature(probs, self.calibration.temperature)

    def apply(self, calibrated: np.ndarray) -> dict[str, np.ndarray]:
        """For calibrated probabilities (N, C): ``sets`` (N, C booleans) and ``refer`` (N,)."""
        sets = self.sets.sets(calibrated)
        return {"sets": sets, "refer": refer(sets, self.classes, self.max_set_size, self.must_not_miss)}

    def to_meta(self) -> dict[str, Any]:
        return {
            **self.calibration.to_dict(),
            "conformal": self.sets.to_dict(),
            "max_set_size": self.max_set_size,
            "must_not_miss": [c for c in self.must_not_miss if c in self.classes],
        }

    @classmethod
    def from_meta(cls, classes: Sequence[str], meta: Mapping[str, Any] | None) -> Trust | None:
        """The trust a model stored in its meta (``meta["trust"]``), None for a model without one."""
        if not meta:
            return None
        calibration = Calibration(
            float(meta["temperature"]), float(meta["ece_before"]), float(meta["ece_after"]), int(meta["n_images"])
        )
        sets = MondrianSets.from_dict(classes, meta["conformal"])
        return cls(calibration, sets, int(meta["max_set_size"]), tuple(meta.get("must_not_miss", ())))


def set_labels(sets: np.ndarray, classes: Sequence[str], probs: np.ndarray) -> list[str]:
    """Each image's set as text, most probable label first, ``|``-separated (empty: no label)."""
    out = []
    for row, p in zip(np.asarray(sets, dtype=bool), np.asarray(probs), strict=True):
        members = [i for i in np.argsort(-p, kind="stable") if row[i]]
        out.append("|".join(classes[i] for i in members))
    return out
