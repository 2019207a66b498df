"""Calibrated probabilities: temperature scaling of a model's class probabilities, and the
expected calibration error (ECE) that says whether it worked.

A trained model's probabilities are fitted once, on the validation split at the end of training
(:func:`fit_temperature`), and every consumer reads them through :func:`apply_temperature` with
the stored temperature: the run's test metrics, the promotion gate, the served pyfunc, the
drift monitor and ``skinflow predict``. One scalar ``T`` divides the log-probabilities before the
softmax (Guo et al. 2017), so the top label never changes and the accuracy metrics stay what
they were; only the confidence moves. The probabilities scaled are the ones the model serves
(the snapshot ensemble's mean softmax), so the served model is still exactly the judged model.

ECE is torchmetrics' top-label L1 calibration error over 15 equal-width confidence bins
(``multiclass_calibration_error(..., norm="l1")``): the maintained implementation, not ours.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

ECE_BINS = 15
T_BOUNDS = (0.05, 20.0)  # a model this far off is broken, not miscalibrated
_EPS = 1e-12


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(probs) / temperature)`` row by row (``temperature`` 1 returns ``probs``)."""
    probs = np.asarray(probs, dtype=np.float64)
    if temperature == 1.0 or probs.size == 0:
        return probs
    logits = np.log(np.clip(probs, _EPS, 1.0)) / float(temperature)
    logits -= logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    return scaled / scaled.sum(axis=1, keepdims=True)


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of ``labels`` under
    :func:`apply_temperature` (a bounded 1-D search over ``log T``; deterministic)."""
    from scipy.optimize import minimize_scalar

    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        raise ValueError("fitting a temperature needs at least one labelled image")
    logp = np.log(np.clip(probs, _EPS, 1.0))

    def nll(log_t: float) -> float:
        z = logp / np.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(z).sum(axis=1))
        return float(np.mean(log_norm - z[np.arange(len(labels)), labels]))

    lo, hi = np.log(T_BOUNDS[0]), np.log(T_BOUNDS[1])
    best = minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-4})
    # a flat optimum (e.g. every image right with p=1) keeps the model as it is
    return float(np.exp(best.x)) if nll(best.x) < nll(0.0) - 1e-9 else 1.0


def ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Top-label expected calibration error over ``n_bins`` equal-width confidence bins
    (torchmetrics ``multiclass_calibration_error``, ``norm="l1"``)."""
    import torch
    from torchmetrics.functional.classification import multiclass_calibration_error

    probs = np.asarray(probs, dtype=np.float64)
    if len(probs) == 0:
        return float("nan")
    value = multiclass_calibration_error(
        torch.from_numpy(probs).float(),
        torch.from_numpy(np.asarray(labels, dtype=np.int64)),
        num_classes=probs.shape[1],
        n_bins=n_bins,
        norm="l1",
    )
    return float(value)


def reliability(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Per equal-width confidence bin: mean confidence, accuracy and count (top label), what a
    reliability diagram draws; empty bins have NaN confidence and accuracy."""
    probs = np.asarray(probs, dtype=np.float64)
    conf = probs.max(axis=1) if len(probs) else np.zeros(0)
    right = (probs.argmax(axis=1) == np.asarray(labels)) if len(probs) else np.zeros(0, bool)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, weights=conf, minlength=n_bins) / count
        accuracy = np.bincount(which, weights=right.astype(np.float64), minlength=n_bins) / count
    return {"edges": edges, "confidence": mean_conf, "accuracy": accuracy, "count": count}


@dataclass(frozen=True)
class Calibration:
    """What a model's calibration step fitted and measured on its calibration images."""

    temperature: float
    ece_before: float
    ece_after: float
    n_images: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def fit(cls, probs: np.ndarray, labels: np.ndarray) -> Calibration:
        """Fit the temperature on ``(probs, labels)`` and measure ECE before and after."""
        t = fit_temperature(probs, labels)
        return cls(t, ece(probs, labels), ece(apply_temperature(probs, t), labels), int(len(labels)))
