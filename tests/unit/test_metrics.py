"""Metrics against a hand-computed 3-class case and scikit-learn; confused pairs; aggregation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import (
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from ml.eval.metrics import aggregate_runs, classification_metrics, confused_pairs, format_mean_std

Y = np.array([0, 0, 0, 1, 1, 2])
P = np.array(
    [
        [0.7, 0.2, 0.1],
        [0.6, 0.3, 0.1],
        [0.3, 0.5, 0.2],
        [0.2, 0.7, 0.1],
        [0.1, 0.3, 0.6],
        [0.2, 0.2, 0.6],
    ]
)


def test_hand_computed_three_class_case():
    m = classification_metrics(Y, P, ["a", "b", "c"])
    json.dumps(m)  # JSON-serialisable
    assert m["n"] == 6
    # predictions 0,0,1,1,2,2
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    pc = m["per_class"]
    assert [pc[c]["precision"] for c in "abc"] == pytest.approx([1.0, 0.5, 0.5])
    assert [pc[c]["recall"] for c in "abc"] == pytest.approx([2 / 3, 0.5, 1.0])
    assert [pc[c]["f1"] for c in "abc"] == pytest.approx([0.8, 0.5, 2 / 3])
    assert [pc[c]["support"] for c in "abc"] == [3, 2, 1]
    assert m["balanced_accuracy"] == pytest.approx(13 / 18)
    assert m["macro_f1"] == pytest.approx(59 / 90)
    # one-vs-rest AUROC by counting (positive, negative) pairs, ties count one half:
    # a: every positive above every negative; b: (4 + 1 + 0.5 + 1) / 8; c: (4 + 0.5) / 5
    assert [pc[c]["auroc"] for c in "abc"] == pytest.approx([1.0, 6.5 / 8, 4.5 / 5])
    assert m["auroc_macro"] == pytest.approx((1.0 + 0.8125 + 0.9) / 3)
    assert m["confused_pairs"] == [{"a": "a", "b": "b", "count": 1}, {"a": "b", "b": "c", "count": 1}]


def test_absent_class_is_excluded_from_macros():
    classes = ["a", "b", "c", "d"]
    probs = np.hstack([P, np.zeros((6, 1))])  # class d never true, never predicted
    m = classification_metrics(Y, probs, classes)
    assert m["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0, "auroc": None}
    assert m["balanced_accuracy"] == pytest.approx(13 / 18)
    assert m["macro_f1"] == pytest.approx(59 / 90)
    assert m["auroc_macro"] == pytest.approx((1.0 + 0.8125 + 0.9) / 3)
    assert m["confusion_matrix"][3] == [0, 0, 0, 0]


def test_predicted_but_absent_class_counts_zero_f1():
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.05, 0.05], [0.1, 0.1, 0.8], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1]])
    m = classification_metrics(y, probs, ["a", "b", "c"])
    # f1: a = 2/3 (p=1, r=1/2), b = 1, c = 0 (predicted once, never true)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert m["balanced_accuracy"] == pytest.approx(0.75)
    assert m["per_class"]["c"]["auroc"] is None


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_cross_check_with_sklearn_on_random_data():
    rng = np.random.default_rng(0)
    k, n = 5, 200
    y = rng.choice([0, 1, 2, 4], size=n, p=[0.5, 0.3, 0.15, 0.05])  # class 3 absent
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    pred = probs.argmax(axis=1)
    classes = [f"c{i}" for i in range(k)]
    m = classification_metrics(y, probs, classes)
    assert m["confusion_matrix"] == confusion_matrix(y, pred, labels=range(k)).tolist()
    assert m["accuracy"] == pytest.approx(np.mean(y == pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=range(k), zero_division=0)
    for i, c in enumerate(classes):
        assert m["per_class"][c]["precision"] == pytest.approx(p[i])
        assert m["per_class"][c]["recall"] == pytest.approx(r[i])
        assert m["per_class"][c]["f1"] == pytest.approx(f[i])
        assert m["per_class"][c]["support"] == s[i]
    present = [0, 1, 2, 4]
    ovr = [roc_auc_score(y == c, probs[:, c]) for c in present]
    assert m["auroc_macro"] == pytest.approx(np.mean(ovr))
    assert m["per_class"]["c3"]["auroc"] is None


def test_confused_pairs_counts_both_ways_sorted():
    cm = np.array([[5, 2, 0, 1], [3, 4, 0, 0], [0, 0, 6, 4], [2, 0, 0, 1]])
    pairs = confused_pairs(cm, ["acne", "ulcer", "tumor", "wheal"])
    assert pairs == [
        {"a": "acne", "b": "ulcer", "count": 5},
        {"a": "tumor", "b": "wheal", "count": 4},
        {"a": "acne", "b": "wheal", "count": 3},
    ]
    assert confused_pairs(cm, ["acne", "ulcer", "tumor", "wheal"], top=1) == pairs[:1]
    with pytest.raises(ValueError, match="does not match"):
        confused_pairs(cm, ["a", "b"])


def test_aggregate_runs_mean_std_table_4_2_form():
    counts = [28, 36, 31, 32]  # mean 31.75, sample std sqrt(32.75 / 3)
    runs = []
    for i, c in enumerate(counts):
        pair = {"a": "ulcer", "b": "tumor", "count": c} if i % 2 == 0 else {"a": "tumor", "b": "ulcer", "count": c}
        extra = [{"a": "crust", "b": "ulcer", "count": 4}] if i == 0 else []
        runs.append(
            {
                "accuracy": [0.8, 0.9, 1.0, 0.9][i],
                "balanced_accuracy": 0.5,
                "macro_f1": 0.6,
                "auroc_macro": None if i == 3 else 0.7 + 0.1 * i,
                "confused_pairs": [pair, *extra],
            }
        )
    agg = aggregate_runs(runs)
    json.dumps(agg)
    assert agg["n_runs"] == 4
    acc = agg["metrics"]["accuracy"]
    assert acc["mean"] == pytest.approx(0.9) and acc["std"] == pytest.approx(math.sqrt(0.02 / 3)) and acc["n"] == 4
    assert agg["metrics"]["balanced_accuracy"]["std"] == pytest.approx(0.0)
    auroc = agg["metrics"]["auroc_macro"]  # None run left out: 0.7, 0.8, 0.9
    assert auroc["n"] == 3 and auroc["mean"] == pytest.approx(0.8) and auroc["std"] == pytest.approx(0.1)
    top, second = agg["confused_pairs"]
    assert (top["a"], top["b"]) == ("ulcer", "tumor")
    assert top["mean"] == pytest.approx(31.75) and top["std"] == pytest.approx(math.sqrt(32.75 / 3))
    assert top["text"] == "ulcer-tumor 31.75 ± 3.30"
    # crust-ulcer appears in one run only: counts 4, 0, 0, 0
    assert second["mean"] == pytest.approx(1.0) and second["std"] == pytest.approx(2.0)


def test_aggregate_single_run_has_zero_std_and_errors():
    m = classification_metrics(Y, P, ["a", "b", "c"])
    agg = aggregate_runs([m])
    assert agg["metrics"]["accuracy"] == {"mean": pytest.approx(4 / 6), "std": 0.0, "n": 1}
    with pytest.raises(ValueError, match="runs is empty"):
        aggregate_runs([])
    with pytest.raises(ValueError, match="'accuracy' missing"):
        aggregate_runs([{"macro_f1": 1.0}])


def test_format_mean_std():
    assert format_mean_std(31.75, 6.28) == "31.75 ± 6.28"
    assert format_mean_std(10, 0.3, digits=1) == "10.0 ± 0.3"
    assert format_mean_std(None, None) == "n/a"


@pytest.mark.parametrize(
    ("y", "probs", "classes", "message"),
    [
        (Y, P, ["a"], "at least 2 classes"),
        (Y, P, ["a", "a", "b"], "unique"),
        (np.array([]), P[:0], ["a", "b", "c"], "non-empty"),
        (Y.astype(float), P, ["a", "b", "c"], "integer"),
        (Y, P[:, :2], ["a", "b", "c"], "shape"),
        (np.array([0, 0, 0, 1, 1, 3]), P, ["a", "b", "c"], r"in \[0, 2\]"),
        (Y, np.where(P > 0.65, np.nan, P), ["a", "b", "c"], "non-finite"),
    ],
)
def test_bad_input(y, probs, classes, message):
    with pytest.raises(ValueError, match=message):
        classification_metrics(y, probs, classes)


def test_time_to_target_and_eta_on_constructed_histories():
    from ml.eval.metrics import eta, time_to_target

    base = [{"val_balanced_accuracy": a, "epoch_seconds": 10.0} for a in (0.3, 0.5, 0.6)]
    fast = [{"val_balanced_accuracy": a, "epoch_seconds": 8.0} for a in (0.4, 0.65)]
    assert time_to_target(base, 0.6) == {"epoch": 3, "seconds": 30.0}
    assert time_to_target(fast, 0.6) == {"epoch": 2, "seconds": 16.0}
    assert time_to_target(fast, 0.7) is None
    assert eta(30.0, 16.0) == pytest.approx(1.875)
    assert eta(30.0, None) is None and eta(None, 16.0) is None


def test_speedup_over_sgd_uses_the_sgd_fp32_trial_as_baseline():
    from ml.eval.metrics import speedup_over_sgd

    def h(*accs, s=10.0):
        return [{"val_balanced_accuracy": a, "epoch_seconds": s} for a in accs]

    trials = [
        {"schedule": "sgd", "amp": False, "history": h(0.3, 0.5, 0.6)},
        {"schedule": "sgd", "amp": True, "history": h(0.7, s=1.0)},  # AMP trial is not the baseline
        {"schedule": "sgdr_dlr_clm", "amp": False, "history": h(0.62, 0.7)},
    ]
    assert speedup_over_sgd(trials, trials[2]) == pytest.approx(3.0)
    # without an fp32 sgd trial the sgd trial at the swept precision is the baseline
    assert speedup_over_sgd(trials[1:], trials[2]) == pytest.approx(1.0 / 20.0)
    assert speedup_over_sgd(trials[2:], trials[2]) is None
    assert speedup_over_sgd(trials, {"history": h(0.1, 0.2)}) is None
