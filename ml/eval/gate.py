"""Promotion-gate statistics: is a challenger model good enough to replace the champion?

All functions are pure numpy/scipy and work on integer class predictions (or class
probabilities, which are reduced to the arg-max) over one shared evaluation set.

Decision rule of :func:`decide` (thresholds come from ``policies/promotion.yaml``):

1. **Recall floor.** No class with support in ``y_true`` may have a challenger recall that is
   below ``recall_floor`` beyond the noise of its few images: a class fails when the one-sided
   ``recall_floor_confidence`` Clopper-Pearson upper bound of its recall (``k`` of ``n`` images
   right) is below the floor. A collapsed minority class (0 of 16) blocks promotion even when
   macro-F1 improves; 4 of 16 (0.25, one image under a 0.30 floor; upper bound 0.48) or 0 of 1 does not, since
   neither shows the class collapsed. Classes without support cannot be judged and are reported.
2. **No champion** (first version): promote iff the recall floor holds.
3. **With a champion**, all of the following must hold:

   a. *Non-inferiority on macro-F1*: the lower bound of the paired-bootstrap CI of
      ``macro_f1(challenger) - macro_f1(champion)`` is ``> -margin``;
   b. *Not significantly worse on top-1*: McNemar's test does not find the challenger
      making more errors than the champion at level ``alpha``;
   c. *No skin-tone group left behind*: given the held-out images' groups, the challenger's
      balanced accuracy on no rated group of at least ``min_group_support`` images is more than
      ``max_group_loss`` below the champion's (:mod:`ml.eval.groups`; ``null`` turns it off);
   d. *Better beyond the noise*: the one-sided ``superiority_level`` lower confidence bound
      of that delta (its ``1 - superiority_level`` bootstrap quantile) is ``> min_improvement``.
      A point delta above 0 is not enough: two models of the same quality would swap the
      champion on up to half the retrains. With ``superiority_level=0.95`` and
      ``min_improvement=0``, in simulated retrains (``tests/unit/test_gate.py``, 10 classes,
      accuracy 0.70, 500 repetitions each) a challenger of the same quality is promoted in
      4-7% of them; one better by 5 macro-F1 points in 64% (300 images) and 76% (400 images)
      when the two models agree on right/wrong for 82% of the images, as retrains of one
      architecture do; 47% and 58% at 71% agreement; 36% and 46% with independent errors.

The held-out set must not hold images either model trained on: :func:`disjoint_heldout` says
which to keep, given the SHA-256 digests of the held-out images and of each model's training
images (train and val splits). :func:`decide_on_heldout` is the gate's whole decision on such a
set: it refuses (verdict ``refused``, no comparison) when fewer than ``min_disjoint_heldout``
images remain (:func:`refuse_if_too_few_disjoint`), else :func:`decide` on them (``promoted`` or
``kept``). Every :class:`GateDecision` carries its verdict, set where it is made.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy import stats

from ml.policies import build_policy

_EXACT_MCNEMAR_BELOW = 25
_BOOT_CHUNK = 256


@dataclass(frozen=True)
class BootstrapResult:
    """Point estimate and percentile CI of ``metric(challenger) - metric(champion)``, with the
    resampled deltas behind them."""

    delta: float
    lo: float
    hi: float
    deltas: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False, compare=False)

    def lower_bound(self, level: float) -> float:
        """One-sided ``level`` lower confidence bound: the ``1 - level`` quantile of the deltas."""
        return float(np.quantile(self.deltas, 1.0 - level))


@dataclass(frozen=True)
class McNemarResult:
    """McNemar test; ``b``: only ``pred_a`` right, ``c``: only ``pred_b`` right."""

    b: int
    c: int
    statistic: float
    p_value: float


@dataclass(frozen=True)
class PromotionPolicy:
    """Thresholds of the promotion gate (see ``policies/promotion.yaml``)."""

    margin: float = 0.03
    recall_floor: float = 0.30
    recall_floor_confidence: float = 0.95  # a class fails when its recall's upper bound is below the floor
    alpha: float = 0.05
    n_boot: int = 2000
    ci: float = 0.95
    seed: int = 0
    superiority_level: float = 0.95
    min_improvement: float = 0.0
    min_disjoint_heldout: int = 50
    max_ece: float | None = 0.20  # refuse a challenger whose calibrated held-out ECE is above it (None: off)
    max_group_loss: float | None = 0.10  # most balanced accuracy a challenger may lose on a skin-tone group
    min_group_support: int = 30  # held-out images a group needs before that rule reads it

    def __post_init__(self) -> None:
        if not 0.5 <= self.recall_floor_confidence < 1.0:
            raise ValueError(f"recall_floor_confidence must lie in [0.5, 1), got {self.recall_floor_confidence}")
        if not 0.5 <= self.superiority_level < 1.0:
            raise ValueError(f"superiority_level must lie in [0.5, 1), got {self.superiority_level}")
        if self.min_disjoint_heldout < 1:
            raise ValueError(f"min_disjoint_heldout must be at least 1, got {self.min_disjoint_heldout}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> PromotionPolicy:
        """Build a policy from a mapping; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown promotion policy keys: {sorted(unknown)}")
        return cls(**values)

    @classmethod
    def load(cls, path: str | Path | None = None) -> PromotionPolicy:
        """The policy at ``path`` (default: ``promotion.yaml`` in the settings' ``policies_dir``):
        every field, no other key (:func:`ml.policies.load_policy`; mistakes are ``PolicyError``)."""
        return build_policy("promotion", path, cls, [f.name for f in fields(cls)])


Verdict = Literal["promoted", "kept", "refused"]
VERDICTS: tuple[Verdict, ...] = ("promoted", "kept", "refused")


@dataclass(frozen=True)
class GateDecision:
    """Outcome of the gate with the numbers behind it. ``verdict``: ``promoted`` (the challenger
    becomes champion), ``kept`` (compared and not better: the champion stays) or ``refused`` (no
    comparison made: too few held-out images neither model trained on)."""

    verdict: Verdict
    reason: str
    numbers: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")

    @property
    def promote(self) -> bool:
        return self.verdict == "promoted"


@dataclass(frozen=True)
class HeldoutOverlap:
    """Which held-out images no model trained on (``keep``) and, per model, how many of the
    held-out images it trained on (None: the model recorded no training images)."""

    keep: np.ndarray
    overlap: dict[str, int | None]

    @property
    def evaluated_on(self) -> int:
        return int(self.keep.sum())


def disjoint_heldout(heldout: Sequence[str], trained: Mapping[str, Collection[str] | None]) -> HeldoutOverlap:
    """The part of a held-out set that is disjoint from every model's training images.

    ``heldout``: the SHA-256 of each held-out image, in evaluation order; ``trained``: per model
    (e.g. ``{"challenger": ..., "champion": ...}``) the SHA-256 digests of the images it was
    trained or selected on, or None when unknown (such a model excludes nothing and is reported
    as None)."""
    digests = np.asarray(list(heldout), dtype=object)
    keep = np.ones(len(digests), dtype=bool)
    overlap: dict[str, int | None] = {}
    for model, seen in trained.items():
        if seen is None:
            overlap[model] = None
            continue
        hit = np.isin(digests, np.asarray(list(seen), dtype=object)) if len(digests) else keep[:0]
        overlap[model] = int(hit.sum())
        keep &= ~hit
    return HeldoutOverlap(keep=keep, overlap=overlap)


def heldout_digest(images: np.ndarray, labels: np.ndarray | Sequence[int], classes: Sequence[str]) -> str:
    """Identity of an evaluation set: SHA-256 over the pixels (with their shape and dtype), the
    labels and the class list. Predictions stored under one digest are valid for exactly the
    same images, in the same order, with the same labels and classes."""
    x = np.ascontiguousarray(images)
    h = hashlib.sha256()
    h.update(json.dumps({"shape": list(x.shape), "dtype": str(x.dtype), "classes": list(classes)}).encode())
    h.update(memoryview(x).cast("B"))
    h.update(np.asarray(labels, dtype=np.int64).tobytes())
    return h.hexdigest()


def _as_labels(values: np.ndarray | Sequence[int]) -> np.ndarray:
    """Integer class labels from labels (1-D) or class probabilities (2-D, arg-max)."""
    arr = np.asarray(values)
    if arr.ndim == 2:
        return arr.argmax(axis=1)
    if arr.ndim != 1:
        raise ValueError(f"expected labels (1-D) or probabilities (2-D), got shape {arr.shape}")
    return arr.astype(np.int64)


def _check_same_length(*arrays: np.ndarray) -> None:
    lengths = {len(a) for a in arrays}
    if len(lengths) != 1:
        raise ValueError(f"arrays differ in length: {sorted(lengths)}")


def _macro_f1_rows(y: np.ndarray, p: np.ndarray, n_classes: int) -> np.ndarray:
    """Macro-F1 of each row of (rows, n) label matrices, averaged over the classes
    present in that row's truth or predictions (as ``sklearn``'s ``average="macro"``)."""
    rows = y.shape[0]
    offset = (np.arange(rows) * n_classes)[:, None]
    size = rows * n_classes
    true_n = np.bincount((y + offset).ravel(), minlength=size).reshape(rows, n_classes)
    pred_n = np.bincount((p + offset).ravel(), minlength=size).reshape(rows, n_classes)
    hit = y == p
    tp = np.bincount((y + offset)[hit], minlength=size).reshape(rows, n_classes)
    denom = true_n + pred_n
    present = denom > 0
    f1 = np.divide(2.0 * tp, denom, out=np.zeros(denom.shape), where=present)
    return f1.sum(axis=1) / present.sum(axis=1)


def _accuracy_rows(y: np.ndarray, p: np.ndarray, n_classes: int) -> np.ndarray:
    """Top-1 accuracy of each row of (rows, n) label matrices."""
    return (y == p).mean(axis=1)


_METRICS: dict[str, Callable[[np.ndarray, np.ndarray, int], np.ndarray]] = {
    "macro_f1": _macro_f1_rows,
    "accuracy": _accuracy_rows,
}


def paired_bootstrap_delta(
    y_true: np.ndarray | Sequence[int],
    pred_champion: np.ndarray | Sequence[int],
    pred_challenger: np.ndarray | Sequence[int],
    metric: str = "macro_f1",
    n_boot: int = 2000,
    seed: int = 0,
    ci: float = 0.95,
) -> BootstrapResult:
    """Paired bootstrap CI of ``metric(challenger) - metric(champion)``.

    Both models are scored on the same resampled indices, so the CI reflects the
    difference between them rather than the noise of the evaluation set. The resampled
    deltas stay in the result for one-sided bounds (:meth:`BootstrapResult.lower_bound`).
    """
    if metric not in _METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {sorted(_METRICS)}")
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must lie in (0, 1), got {ci}")
    y, a, b = (_as_labels(v) for v in (y_true, pred_champion, pred_challenger))
    _check_same_length(y, a, b)
    score = _METRICS[metric]
    n_classes = int(max(y.max(), a.max(), b.max())) + 1
    delta = float(score(y[None], b[None], n_classes)[0] - score(y[None], a[None], n_classes)[0])
    rng = np.random.default_rng(seed)
    deltas = np.empty(n_boot)
    for start in range(0, n_boot, _BOOT_CHUNK):
        idx = rng.integers(0, len(y), size=(min(_BOOT_CHUNK, n_boot - start), len(y)))
        yi = y[idx]
        deltas[start : start + len(idx)] = score(yi, b[idx], n_classes) - score(yi, a[idx], n_classes)
    tail = (1.0 - ci) / 2.0
    lo, hi = np.quantile(deltas, [tail, 1.0 - tail])
    return BootstrapResult(delta=delta, lo=float(lo), hi=float(hi), deltas=deltas)


def mcnemar(
    y_true: np.ndarray | Sequence[int],
    pred_a: np.ndarray | Sequence[int],
    pred_b: np.ndarray | Sequence[int],
) -> McNemarResult:
    """McNemar's test on top-1 correctness of two models on the same items.

    Exact two-sided binomial test when ``b + c < 25`` (statistic ``min(b, c)``),
    otherwise chi-square with continuity correction, ``(|b - c| - 1)^2 / (b + c)``.
    """
    y, a, b_pred = (_as_labels(v) for v in (y_true, pred_a, pred_b))
    _check_same_length(y, a, b_pred)
    right_a, right_b = a == y, b_pred == y
    b = int(np.sum(right_a & ~right_b))
    c = int(np.sum(~right_a & right_b))
    n = b + c
    if n == 0:
        return McNemarResult(b=0, c=0, statistic=0.0, p_value=1.0)
    if n < _EXACT_MCNEMAR_BELOW:
        p_value = float(stats.binomtest(min(b, c), n, 0.5).pvalue)
        return McNemarResult(b=b, c=c, statistic=float(min(b, c)), p_value=p_value)
    statistic = (abs(b - c) - 1.0) ** 2 / n
    return McNemarResult(b=b, c=c, statistic=statistic, p_value=float(stats.chi2.sf(statistic, 1)))


def per_class_recall(
    y_true: np.ndarray | Sequence[int], pred: np.ndarray | Sequence[int], n_classes: int
) -> np.ndarray:
    """Recall of each class ``0..n_classes-1``; NaN for classes absent from ``y_true``."""
    y, p = _as_labels(y_true), _as_labels(pred)
    _check_same_length(y, p)
    support = np.bincount(y, minlength=n_classes).astype(float)
    hits = np.bincount(y[y == p], minlength=n_classes).astype(float)
    return np.divide(hits, support, out=np.full(n_classes, np.nan), where=support > 0)


def recall_upper_bounds(
    y_true: np.ndarray | Sequence[int], pred: np.ndarray | Sequence[int], n_classes: int, level: float
) -> np.ndarray:
    """Per class, the one-sided ``level`` Clopper-Pearson upper confidence bound of its recall
    (``k`` right of ``n``: the ``level`` quantile of Beta(k + 1, n - k), 1 when k = n); NaN
    without support."""
    from scipy.stats import beta

    y, p = _as_labels(y_true), _as_labels(pred)
    n = np.bincount(y, minlength=n_classes)
    k = np.bincount(y[y == p], minlength=n_classes)
    out = np.full(n_classes, np.nan)
    for c in range(n_classes):
        if n[c]:
            out[c] = 1.0 if k[c] == n[c] else float(beta.ppf(level, k[c] + 1, n[c] - k[c]))
    return out


def _recall_failures(upper: np.ndarray, classes: Sequence[str], floor: float) -> list[str]:
    """Names of classes with support whose recall is below the floor beyond the noise (its upper bound is)."""
    return [name for name, u in zip(classes, upper, strict=True) if not np.isnan(u) and u < floor]


def _calibration_problem(
    y: np.ndarray, challenger: np.ndarray | Sequence[int], pol: PromotionPolicy, numbers: dict[str, Any]
) -> str | None:
    """The challenger's top-label ECE on the held-out images (when it comes as probabilities) into
    ``numbers``; a reason to keep it when the policy's ``max_ece`` is set and exceeded. Labels
    alone carry no confidence: the rule needs probabilities (the promotion gate task passes them)."""
    from ml.eval.calibration import ece

    probs = np.asarray(challenger)
    value = ece(probs, y) if probs.ndim == 2 and len(y) else None
    numbers.update(ece=value, max_ece=pol.max_ece)
    if pol.max_ece is None or value is None:
        return None
    if value > pol.max_ece:
        return f"calibration: held-out ECE {value:.4f} > max_ece {pol.max_ece}"
    return None


def decide(
    y_true: np.ndarray | Sequence[int],
    challenger: np.ndarray | Sequence[int],
    champion: np.ndarray | Sequence[int] | None,
    classes: Sequence[str],
    policy: PromotionPolicy | Mapping[str, Any],
    groups: Sequence[str] | None = None,
) -> GateDecision:
    """Apply the promotion rule of this module's docstring.

    ``challenger`` and ``champion`` are labels or class probabilities on ``y_true``'s
    items; ``champion=None`` means there is no champion yet. ``groups`` (one per item, e.g. the
    skin-tone group) turn on the group rule.
    """
    pol = policy if isinstance(policy, PromotionPolicy) else PromotionPolicy.from_mapping(policy)
    y, new = _as_labels(y_true), _as_labels(challenger)
    recalls = per_class_recall(y, new, len(classes))
    upper = recall_upper_bounds(y, new, len(classes), pol.recall_floor_confidence)
    low = _recall_failures(upper, classes, pol.recall_floor)
    numbers: dict[str, Any] = {
        "recall_floor": pol.recall_floor,
        "recall_floor_confidence": pol.recall_floor_confidence,
        "per_class_recall": {c: float(r) for c, r in zip(classes, recalls, strict=True)},
        "per_class_recall_upper": {c: float(u) for c, u in zip(classes, upper, strict=True)},
        "classes_below_floor": low,
    }
    ece_problem = _calibration_problem(y, challenger, pol, numbers)
    if ece_problem:
        return GateDecision("kept", f"{'first version: ' if champion is None else ''}{ece_problem}", numbers)
    if champion is None:
        if low:
            return GateDecision("kept", f"first version: recall below floor for {low}", numbers)
        return GateDecision("promoted", "first version: every class recall clears the floor", numbers)
    old = _as_labels(champion)
    boot = paired_bootstrap_delta(y, old, new, "macro_f1", pol.n_boot, pol.seed, pol.ci)
    superior_lo = boot.lower_bound(pol.superiority_level)
    test = mcnemar(y, old, new)
    worse_top1 = test.p_value < pol.alpha and test.b > test.c
    numbers.update(
        margin=pol.margin,
        macro_f1_delta=boot.delta,
        macro_f1_delta_lo=boot.lo,
        macro_f1_delta_hi=boot.hi,
        superiority_level=pol.superiority_level,
        macro_f1_delta_superiority_lo=superior_lo,
        min_improvement=pol.min_improvement,
        mcnemar_b=test.b,
        mcnemar_c=test.c,
        mcnemar_p=test.p_value,
    )
    promote, reason = _compare(boot, superior_lo, test, worse_top1, low, pol)
    if groups is not None:
        from ml.eval.groups import group_loss_problem

        problem, by_group = group_loss_problem(y, old, new, groups, pol.max_group_loss, pol.min_group_support)
        numbers["skin_tone_groups"] = by_group
        if problem and promote:
            promote, reason = False, problem
    return GateDecision("promoted" if promote else "kept", reason, numbers)


def _compare(
    boot: BootstrapResult,
    superior_lo: float,
    test: McNemarResult,
    worse_top1: bool,
    low: list[str],
    pol: PromotionPolicy,
) -> tuple[bool, str]:
    """Promotion verdict against a champion: the first failing condition, else promote."""
    if low:
        return False, f"recall below floor {pol.recall_floor} for {low}: champion kept"
    if boot.lo <= -pol.margin:
        return False, (f"not non-inferior: macro-F1 delta CI lower bound {boot.lo:.4f} <= -{pol.margin}: champion kept")
    if worse_top1:
        return False, (
            f"significantly worse on top-1 (McNemar b={test.b}, c={test.c}, p={test.p_value:.4g}): champion kept"
        )
    if superior_lo <= pol.min_improvement:
        return False, (
            f"not better beyond the noise: macro-F1 delta {boot.delta:+.4f}, its one-sided "
            f"{pol.superiority_level:.0%} lower bound {superior_lo:+.4f} <= {pol.min_improvement:+.4f}: champion kept"
        )
    return True, (
        f"better: macro-F1 delta {boot.delta:+.4f} (one-sided {pol.superiority_level:.0%} lower bound "
        f"{superior_lo:+.4f} > {pol.min_improvement:+.4f}; CI [{boot.lo:+.4f}, {boot.hi:+.4f}]), "
        "non-inferior and recall floor met"
    )


def refuse_if_too_few_disjoint(heldout: HeldoutOverlap, n_heldout: int, policy: PromotionPolicy) -> GateDecision | None:
    """The gate's refusal: a ``refused`` decision when fewer than ``policy.min_disjoint_heldout`` of the
    ``n_heldout`` held-out images are disjoint from both models' training images, else None."""
    if heldout.evaluated_on >= policy.min_disjoint_heldout:
        return None
    return GateDecision(
        "refused",
        (
            f"refused: only {heldout.evaluated_on} of {n_heldout} held-out images are disjoint from the models' "
            f"training images (overlap per model: {heldout.overlap}); the policy needs min_disjoint_heldout="
            f"{policy.min_disjoint_heldout}: champion kept"
        ),
        {"min_disjoint_heldout": policy.min_disjoint_heldout},
    )


def decide_on_heldout(
    y_true: np.ndarray,
    challenger: np.ndarray,
    champion: np.ndarray | None,
    classes: Sequence[str],
    policy: PromotionPolicy,
    heldout: HeldoutOverlap,
    groups: Sequence[str] | None = None,
) -> GateDecision:
    """The gate's decision on a held-out set (labels or probabilities in evaluation order):
    :func:`refuse_if_too_few_disjoint`, else :func:`decide` on the images neither model trained on
    (``heldout.keep``, from :func:`disjoint_heldout`); ``groups`` in the same order."""
    refusal = refuse_if_too_few_disjoint(heldout, len(y_true), policy)
    if refusal is not None:
        return refusal
    keep = heldout.keep
    y, new = np.asarray(y_true)[keep], np.asarray(challenger)[keep]
    kept_groups = None if groups is None else np.asarray(groups)[keep]
    return decide(y, new, None if champion is None else np.asarray(champion)[keep], classes, policy, kept_groups)


def after_earlier_promotion(decision: GateDecision) -> GateDecision:
    """The decision for a challenger an earlier attempt of the same gate already made champion
    (the alias moved, then the attempt failed): it stays promoted, the re-evaluation is reported."""
    if decision.promote:
        return decision
    return GateDecision(
        "promoted",
        f"already champion (alias moved by an earlier attempt); re-evaluation: {decision.reason}",
        decision.numbers,
    )
