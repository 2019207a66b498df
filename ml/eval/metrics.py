"""Classification metrics, confused pairs and mean +- std over repeated fits (thesis Table 4.2).

Conventions for classes missing from an evaluation set (common on long-tailed data):

- ``balanced_accuracy`` averages recall over the classes present in ``y_true``.
- ``macro_f1`` averages F1 over the classes present in ``y_true`` or predicted (scikit-learn's
  default labels): a class predicted but never true scores F1 = 0; one neither true nor
  predicted is left out.
- ``auroc_macro`` averages one-vs-rest AUROC over the classes whose AUROC is defined (both
  positives and negatives in ``y_true``); the others have ``auroc`` None; no such class: None.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

SCALAR_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc_macro")


def nll(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log-likelihood of the true labels (probabilities clipped at 1e-12)."""
    labels = np.asarray(labels, dtype=np.int64)
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict:
    """JSON-serialisable metrics of ``probs`` (n, C) against integer labels ``y_true`` (n,)."""
    y, p = _check_inputs(y_true, probs, classes)
    k = len(classes)
    pred = p.argmax(axis=1)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y, pred), 1)

    tp = np.diag(cm).astype(float)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = _ratio(tp, predicted)
    recall = _ratio(tp, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    present = support > 0
    scored = present | (predicted > 0)
    aurocs = [_auroc(y == c, p[:, c]) for c in range(k)]
    defined = [a for a in aurocs if a is not None]

    return {
        "n": int(len(y)),
        "accuracy": float(tp.sum() / len(y)),
        "balanced_accuracy": float(recall[present].mean()),
        "macro_f1": float(f1[scored].mean()),
        "auroc_macro": float(np.mean(defined)) if defined else None,
        "per_class": {
            label: {
                "precision": float(precision[c]),
                "recall": float(recall[c]),
                "f1": float(f1[c]),
                "support": int(support[c]),
                "auroc": aurocs[c],
            }
            for c, label in enumerate(classes)
        },
        "confusion_matrix": cm.tolist(),
        "confused_pairs": confused_pairs(cm, classes),
    }


def confused_pairs(cm: np.ndarray | list[list[int]], classes: list[str], top: int | None = None) -> list[dict]:
    """Unordered class pairs with their errors counted both ways, most confused first.

    Each entry is ``{"a", "b", "count"}`` with ``a`` before ``b`` in ``classes``; pairs with no
    errors are omitted; ties keep the class order.
    """
    m = np.asarray(cm)
    if m.shape != (len(classes), len(classes)):
        raise ValueError(f"confusion matrix shape {m.shape} does not match {len(classes)} classes")
    pairs = [
        {"a": classes[i], "b": classes[j], "count": int(m[i, j] + m[j, i])}
        for i in range(len(classes))
        for j in range(i + 1, len(classes))
        if m[i, j] + m[j, i] > 0
    ]
    pairs.sort(key=lambda d: -d["count"])
    return pairs if top is None else pairs[:top]


def aggregate_runs(runs: list[dict], keys: Sequence[str] = SCALAR_KEYS) -> dict:
    """Mean and std (ddof=1 when more than one value) over runs of :func:`classification_metrics`.

    Returns ``{"n_runs", "metrics": {key: {"mean", "std", "n"}}, "confused_pairs": [{"a", "b",
    "mean", "std", "text"}]}``. None values (an undefined AUROC) are left out of their key's
    statistics; a pair missing from a run counts 0 errors there. ``text`` reads like the
    thesis's Table 4.2: ``"ulcer-tumor 31.75 ± 6.28"``.
    """
    if not runs:
        raise ValueError("runs is empty: need at least one metrics dict")
    metrics = {}
    for key in keys:
        missing = [i for i, r in enumerate(runs) if key not in r]
        if missing:
            raise ValueError(f"metric {key!r} missing from runs {missing}")
        metrics[key] = _mean_std([r[key] for r in runs if r[key] is not None])

    counts: dict[frozenset[str], list[int]] = {}
    names: dict[frozenset[str], tuple[str, str]] = {}
    for i, run in enumerate(runs):
        for pair in run.get("confused_pairs", []):
            key = frozenset((pair["a"], pair["b"]))
            names.setdefault(key, (pair["a"], pair["b"]))
            counts.setdefault(key, [0] * len(runs))[i] += pair["count"]
    pairs = []
    for key, values in counts.items():
        a, b = names[key]
        stats = _mean_std(values)
        text = f"{a}-{b} {format_mean_std(stats['mean'], stats['std'])}"
        pairs.append({"a": a, "b": b, "mean": stats["mean"], "std": stats["std"], "text": text})
    pairs.sort(key=lambda d: -d["mean"])
    return {"n_runs": len(runs), "metrics": metrics, "confused_pairs": pairs}


def format_mean_std(mean: float | None, std: float | None, digits: int = 2) -> str:
    """``"31.75 ± 6.28"``; ``"n/a"`` when the mean is undefined."""
    if mean is None:
        return "n/a"
    return f"{mean:.{digits}f} ± {0.0 if std is None else std:.{digits}f}"


def _mean_std(values: Sequence[float]) -> dict:
    arr = np.asarray(values, dtype=float)
    if len(arr) == 0:
        return {"mean": None, "std": None, "n": 0}
    std = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    return {"mean": float(arr.mean()), "std": std, "n": int(len(arr))}


def _auroc(positive: np.ndarray, score: np.ndarray) -> float | None:
    """One-vs-rest AUROC, None when ``positive`` is all True or all False."""
    if positive.all() or not positive.any():
        return None
    return float(roc_auc_score(positive, score))


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` with 0 where ``den`` is 0 (scikit-learn's ``zero_division=0``)."""
    num = np.asarray(num, dtype=float)
    den = np.asarray(den, dtype=float)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _check_inputs(y_true: np.ndarray, probs: np.ndarray, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=float)
    k = len(classes)
    if k < 2:
        raise ValueError(f"need at least 2 classes, got {k}")
    if len(set(classes)) != k:
        raise ValueError(f"class names must be unique, got {classes}")
    if y.ndim != 1 or len(y) == 0:
        raise ValueError(f"y_true must be a non-empty 1-d array, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y_true must hold integer class indices, got dtype {y.dtype}")
    if p.shape != (len(y), k):
        raise ValueError(f"probs must have shape (n, n_classes) = ({len(y)}, {k}), got {p.shape}")
    if y.min() < 0 or y.max() >= k:
        raise ValueError(f"y_true values must be in [0, {k - 1}], got range [{y.min()}, {y.max()}]")
    if not np.all(np.isfinite(p)):
        raise ValueError("probs contain non-finite values")
    return y.astype(np.int64), p


def time_to_target(
    history: Sequence[dict[str, float]], target: float, metric: str = "val_balanced_accuracy", tol: float = 1e-9
) -> dict[str, float] | None:
    """First epoch whose ``metric`` >= ``target`` (within ``tol``) and the cumulative
    ``epoch_seconds`` up to and including it; None when never reached."""
    elapsed = 0.0
    for i, row in enumerate(history, start=1):
        elapsed += float(row["epoch_seconds"])
        value = row.get(metric)
        if value is not None and not math.isnan(value) and value >= target - tol:
            return {"epoch": int(row.get("epoch", i)), "seconds": elapsed}
    return None


def eta(baseline_seconds: float | None, variant_seconds: float | None) -> float | None:
    """The thesis's speedup: baseline time / variant time to the same target; None if either
    never reached it."""
    if baseline_seconds is None or variant_seconds is None or variant_seconds <= 0:
        return None
    return baseline_seconds / variant_seconds


def speedup_over_sgd(trials: list[dict], best: dict, metric: str = "val_balanced_accuracy") -> float | None:
    """The thesis's eta of the best trial: time for the SGD baseline trial (fp32 when the sweep
    has one, else SGD at the swept precision) to reach its own best ``metric`` / time for
    ``best`` to reach it (trials carry per-epoch ``history`` rows with ``epoch_seconds``). None without an SGD trial, or when ``best`` never reaches
    the target."""
    sgd = [t for t in trials if t.get("schedule") == "sgd" and t.get("history")]
    baselines = [t for t in sgd if not t.get("amp")] or sgd
    if not baselines or not best.get("history"):
        return None
    base = max(baselines, key=lambda t: max(h[metric] for h in t["history"]))
    target = max(h[metric] for h in base["history"])
    base_t, best_t = time_to_target(base["history"], target), time_to_target(best["history"], target)
    return eta(base_t["seconds"] if base_t else None, best_t["seconds"] if best_t else None)
