"""Label shift: class priors of a batch by black-box shift estimation (BBSE, Lipton et al. 2018).

Under label shift (``p(x | y)`` fixed, ``p(y)`` changed) the distribution ``q`` of a fixed
classifier's predictions on the batch is ``q = C pi``, where ``C[i, j] = P(yhat = i | y = j)`` is
the classifier's confusion matrix (columns normalised) on data with known labels (the model's
validation split) and ``pi`` the batch's class priors. :func:`bbse_priors` solves that system on
the probability simplex (non-negative least squares with the sum-to-one row weighted heavily),
:func:`bbse_bootstrap` gives percentile intervals by resampling both the validation pairs and the
batch predictions, and :func:`expected_accuracy` the top-1 accuracy to expect under priors
``pi``: ``sum_j pi_j C[j, j]`` (per-class recall weighted by the new priors).
:func:`estimate_label_shift` is the monitor's step: BBSE of a described batch against the
model's described validation images, measured from the reference's class priors
(:func:`class_priors`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from scipy.optimize import nnls

_SIMPLEX_WEIGHT = 1e3  # weight of the sum-to-one row: the solution sums to 1 within ~1e-6


def confusion_columns(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, smoothing: float = 0.0) -> np.ndarray:
    """``C[i, j] = P(yhat = i | y = j)`` estimated from labelled pairs. A class without a labelled
    example gets a uniform column (it carries no information); ``smoothing`` adds that many
    pseudo-counts per cell."""
    counts = np.zeros((n_classes, n_classes), dtype=np.float64)
    np.add.at(counts, (np.asarray(y_pred, int), np.asarray(y_true, int)), 1.0)
    counts += smoothing
    totals = counts.sum(axis=0, keepdims=True)
    return np.where(totals > 0, counts / np.maximum(totals, 1e-12), 1.0 / n_classes)


def predicted_distribution(y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Share of each predicted class."""
    counts = np.bincount(np.asarray(y_pred, int), minlength=n_classes).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def bbse_priors(confusion: np.ndarray, q: np.ndarray) -> np.ndarray:
    """The priors ``pi`` on the simplex minimising ``||C pi - q||``."""
    k = confusion.shape[1]
    a = np.vstack([confusion, np.full((1, k), _SIMPLEX_WEIGHT)])
    b = np.concatenate([q, [_SIMPLEX_WEIGHT]])
    pi, _ = nnls(a, b)
    return pi / pi.sum() if pi.sum() > 0 else np.full(k, 1.0 / k)


def expected_accuracy(confusion: np.ndarray, priors: np.ndarray) -> float:
    """Top-1 accuracy expected under ``priors``: the recalls ``C[j, j]`` weighted by them."""
    return float(np.diag(confusion) @ priors)


@dataclass
class LabelShiftEstimate:
    """BBSE priors with bootstrap percentile intervals, and the accuracy to expect under them."""

    priors: np.ndarray
    low: np.ndarray
    high: np.ndarray
    reference_priors: np.ndarray
    expected_accuracy: float
    expected_accuracy_interval: tuple[float, float]
    reference_accuracy: float
    n_boot: int

    @property
    def max_change(self) -> float:
        """Largest absolute change of a class prior from the reference priors."""
        return float(np.max(np.abs(self.priors - self.reference_priors)))

    def significant(self) -> np.ndarray:
        """Classes whose interval excludes their reference prior."""
        return (self.low > self.reference_priors) | (self.high < self.reference_priors)

    def to_dict(self, classes: list[str]) -> dict:
        return {
            "method": "bbse",
            "classes": list(classes),
            "priors": {c: float(p) for c, p in zip(classes, self.priors, strict=True)},
            "interval_low": {c: float(p) for c, p in zip(classes, self.low, strict=True)},
            "interval_high": {c: float(p) for c, p in zip(classes, self.high, strict=True)},
            "reference_priors": {c: float(p) for c, p in zip(classes, self.reference_priors, strict=True)},
            "max_prior_change": self.max_change,
            "significant_classes": [c for c, s in zip(classes, self.significant(), strict=True) if s],
            "expected_accuracy": self.expected_accuracy,
            "expected_accuracy_interval": list(self.expected_accuracy_interval),
            "reference_accuracy": self.reference_accuracy,
            "n_boot": self.n_boot,
        }


def bbse_bootstrap(
    val_true: np.ndarray,
    val_pred: np.ndarray,
    batch_pred: np.ndarray,
    n_classes: int,
    reference_priors: np.ndarray | None = None,
    n_boot: int = 200,
    level: float = 0.95,
    seed: int = 0,
) -> LabelShiftEstimate:
    """BBSE on the batch's predicted classes with the confusion matrix of the validation pairs;
    intervals from ``n_boot`` resamples of both (percentile, two-sided ``level``).

    ``reference_priors`` (default: the validation label shares) are what the change is measured
    against; ``reference_accuracy`` is the expected accuracy under them."""
    val_true, val_pred, batch_pred = (np.asarray(a, int) for a in (val_true, val_pred, batch_pred))
    if len(val_true) == 0 or len(batch_pred) == 0:
        raise ValueError("BBSE needs labelled validation predictions and a non-empty batch")
    conf = confusion_columns(val_true, val_pred, n_classes)
    ref = predicted_distribution(val_true, n_classes) if reference_priors is None else np.asarray(reference_priors)
    priors = bbse_priors(conf, predicted_distribution(batch_pred, n_classes))
    rng = np.random.default_rng(seed)
    boots, accs = np.empty((n_boot, n_classes)), np.empty(n_boot)
    for b in range(n_boot):
        v = rng.integers(0, len(val_true), len(val_true))
        c = confusion_columns(val_true[v], val_pred[v], n_classes)
        boots[b] = bbse_priors(
            c, predicted_distribution(batch_pred[rng.integers(0, len(batch_pred), len(batch_pred))], n_classes)
        )
        accs[b] = expected_accuracy(c, boots[b])
    tail = 100 * (1 - level) / 2
    acc_lo, acc_hi = np.percentile(accs, [tail, 100 - tail]) if n_boot else (np.nan, np.nan)
    return LabelShiftEstimate(
        priors=priors,
        low=np.percentile(boots, tail, axis=0) if n_boot else priors.copy(),
        high=np.percentile(boots, 100 - tail, axis=0) if n_boot else priors.copy(),
        reference_priors=ref,
        expected_accuracy=expected_accuracy(conf, priors),
        expected_accuracy_interval=(float(acc_lo), float(acc_hi)),
        reference_accuracy=expected_accuracy(conf, ref),
        n_boot=n_boot,
    )


class _Described(Protocol):
    """What :func:`estimate_label_shift` reads of :class:`ml.monitor.describe.Described`."""

    probs: np.ndarray
    classes: list[str]

    def __len__(self) -> int: ...

    def label_indices(self) -> np.ndarray: ...


def class_priors(labels: np.ndarray, n_classes: int) -> np.ndarray | None:
    """Share of each class among the labelled rows (label index >= 0); None when none is labelled."""
    labels = np.asarray(labels, int)
    labels = labels[labels >= 0]
    if len(labels) == 0:
        return None
    return np.bincount(labels, minlength=n_classes) / len(labels)


def estimate_label_shift(
    validation: _Described | None,
    reference: _Described,
    batch: _Described,
    n_boot: int,
    level: float,
    seed: int = 0,
) -> LabelShiftEstimate | None:
    """BBSE priors of ``batch`` (:func:`bbse_bootstrap`): the confusion matrix of the model's
    labelled ``validation`` images, the change measured from the labelled ``reference`` images'
    class priors (the validation label shares when the reference has no labels). None without
    validation images."""
    if validation is None or len(validation) == 0:
        return None
    k = len(reference.classes)
    val_labels = validation.label_indices()
    labelled = val_labels >= 0
    return bbse_bootstrap(
        val_labels[labelled],
        validation.probs[labelled].argmax(axis=1),
        batch.probs.argmax(axis=1),
        k,
        class_priors(reference.label_indices(), k),
        n_boot=n_boot,
        level=level,
        seed=seed,
    )
