"""Calibrated probabilities and prediction sets: ECE against its closed form, temperature scaling
recovering a planted temperature, and the class-conditional coverage guarantee measured over
many draws, with the failures that skipping either step produces."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from ml.eval.calibration import Calibration, apply_temperature, ece, fit_temperature, reliability
from ml.eval.conformal import MondrianSets, coverage, refer
from ml.eval.trust import PredictionPolicy, Trust, set_labels

CLASSES = ["common", "frequent", "rare", "melanoma"]
PRIORS = np.array([0.55, 0.3, 0.1, 0.05])
SIGNAL = np.array([2.5, 2.0, 1.2, 0.8])  # the minority classes are the hard ones
ALPHA = 0.1


def _draw(rng: np.random.Generator, n: int, overconfidence: float = 2.5) -> tuple[np.ndarray, np.ndarray]:
    """A long-tailed labelled set and an over-confident model's probabilities for it: the true
    class's logit is raised by its signal, and the model sharpens its softmax by ``overconfidence``."""
    y = rng.choice(len(CLASSES), size=n, p=PRIORS)
    z = rng.normal(size=(n, len(CLASSES))) + np.log(PRIORS)
    z[np.arange(n), y] += SIGNAL[y]
    z *= overconfidence
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True), y


def test_ece_is_torchmetrics_top_label_l1_and_matches_the_closed_form():
    # 4 images in one bin (confidence 0.8), 3 right: |0.75 - 0.8| = 0.05
    probs = np.array([[0.8, 0.2]] * 4)
    labels = np.array([0, 0, 0, 1])
    assert ece(probs, labels) == pytest.approx(0.05, abs=1e-6)
    # two bins, weighted by their counts: (2 * |1 - 0.95| + 2 * |0 - 0.65|) / 4
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.35, 0.65], [0.35, 0.65]])
    assert ece(probs, np.array([0, 0, 0, 0])) == pytest.approx((2 * 0.05 + 2 * 0.65) / 4, abs=1e-6)
    curve = reliability(probs, np.zeros(4, int))
    assert curve["count"].sum() == 4 and np.nansum(curve["accuracy"] * curve["count"]) == 2


def test_temperature_scaling_recovers_a_planted_temperature_and_keeps_the_top_label():
    rng = np.random.default_rng(0)
    z = 1.5 * rng.normal(size=(4000, len(CLASSES)))
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(len(CLASSES), p=row) for row in probs])  # calibrated by construction
    sharp = apply_temperature(probs, 1 / 3)  # the same model, three times too sure
    t = fit_temperature(sharp, y)
    assert t == pytest.approx(3.0, rel=0.1)
    assert (apply_temperature(sharp, t).argmax(1) == sharp.argmax(1)).all()
    cal = Calibration.fit(sharp, y)
    assert cal.ece_before > 0.1 and cal.ece_after < 0.03
    np.testing.assert_allclose(apply_temperature(probs, 1.0), probs)


def test_a_flat_optimum_keeps_the_model_as_it_is():
    probs = np.eye(3)[[0, 1, 2, 0]]
    assert fit_temperature(probs, np.array([0, 1, 2, 0])) == 1.0


def _marginal_sets(cal_p: np.ndarray, cal_y: np.ndarray, test_p: np.ndarray, alpha: float) -> np.ndarray:
    """Pooled split conformal (one quantile for every class): the marginal guarantee only."""
    scores = np.sort(1 - cal_p[np.arange(len(cal_y)), cal_y])
    k = int(np.ceil((len(scores) + 1) * (1 - alpha))) - 1
    return (1 - test_p) <= scores[min(k, len(scores) - 1)]


def test_class_conditional_coverage_holds_for_every_class_and_fails_without_calibration():
    """200 draws of (validation, test) from a long-tailed problem with hard minority classes.

    With the trust procedure (temperature and Mondrian sets fitted on the same validation
    images), every class's coverage over the draws is at least 1 - alpha within binomial error.
    Skipping the conformal step (the top label alone) or pooling the classes (a marginal
    guarantee) leaves a minority class far below it."""
    rng = np.random.default_rng(1)
    policy = PredictionPolicy(alpha=ALPHA, max_set_size=1, must_not_miss=("melanoma",))
    hits = {name: [] for name in CLASSES}
    top1 = {name: [] for name in CLASSES}
    pooled = {name: [] for name in CLASSES}
    for _ in range(200):
        cal_p, cal_y = _draw(rng, 600)
        test_p, test_y = _draw(rng, 200)
        trust = Trust.fit(cal_p, cal_y, CLASSES, policy)
        sets = trust.apply(trust.calibrated(test_p))["sets"]
        marginal = _marginal_sets(trust.calibrated(cal_p), cal_y, trust.calibrated(test_p), ALPHA)
        for c, name in enumerate(CLASSES):
            mine = test_y == c
            hits[name] += sets[mine, c].tolist()
            top1[name] += (test_p[mine].argmax(1) == c).tolist()
            pooled[name] += marginal[mine, c].tolist()
    for name in CLASSES:
        n = len(hits[name])
        floor = (1 - ALPHA) - 3 * np.sqrt(ALPHA * (1 - ALPHA) / n)  # 3 binomial standard errors
        assert np.mean(hits[name]) >= floor, f"{name}: coverage {np.mean(hits[name]):.3f} < {floor:.3f} (n={n})"
    assert np.mean(top1["melanoma"]) < 1 - ALPHA - 0.2, "the top label alone covers the rare class far less"
    assert np.mean(pooled["melanoma"]) < 1 - ALPHA - 0.1, "a pooled quantile under-covers the rare class"
    assert stats.binomtest(int(np.sum(pooled["melanoma"])), len(pooled["melanoma"]), 1 - ALPHA).pvalue < 1e-6


def test_a_class_with_too_few_calibration_images_is_in_every_set():
    probs = np.array([[0.9, 0.1], [0.8, 0.2]] * 10 + [[0.3, 0.7]] * 5)
    labels = np.array([0] * 20 + [1] * 5)  # 5 < 1/alpha - 1 = 9 images of class 1
    sets = MondrianSets.fit(probs, labels, ["a", "b"], ALPHA).sets(np.array([[0.99, 0.01], [0.5, 0.5]]))
    assert sets[:, 1].all()


def test_refer_on_large_sets_empty_sets_and_must_not_miss_labels():
    sets = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]], dtype=bool)
    flags = refer(sets, CLASSES, max_set_size=1, must_not_miss=["melanoma", "tumor"])
    assert flags.tolist() == [False, True, True, True]
    assert refer(sets, CLASSES, 2, []).tolist() == [False, False, False, True]
    probs = np.array([[0.1, 0.6, 0.3, 0.0]])
    assert set_labels(np.array([[1, 1, 1, 0]], dtype=bool), CLASSES, probs) == ["frequent|rare|common"]


def test_trust_round_trips_through_the_model_meta():
    rng = np.random.default_rng(2)
    probs, y = _draw(rng, 500)
    trust = Trust.fit(probs, y, CLASSES, PredictionPolicy(must_not_miss=("melanoma", "ulcer")))
    back = Trust.from_meta(CLASSES, trust.to_meta())
    test, _ = _draw(rng, 50)
    np.testing.assert_array_equal(
        back.apply(back.calibrated(test))["sets"], trust.apply(trust.calibrated(test))["sets"]
    )
    assert back.must_not_miss == ("melanoma",), "labels the model does not know are dropped"
    assert Trust.from_meta(CLASSES, None) is None
    by_class = coverage(trust.apply(trust.calibrated(probs))["sets"], y, CLASSES)
    assert set(by_class) == set(CLASSES) and all(v["n"] > 0 for v in by_class.values())


def test_the_shipped_prediction_policy_loads():
    policy = PredictionPolicy.load()
    assert 0 < policy.alpha < 1 and "melanoma" in policy.must_not_miss
    with pytest.raises(ValueError, match="alpha"):
        PredictionPolicy(alpha=1.5)
