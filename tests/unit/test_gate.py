"""Promotion-gate statistics: McNemar, paired bootstrap, recall floor and the decision rule."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import f1_score

from ml.eval.gate import (
    PromotionPolicy,
    decide,
    mcnemar,
    paired_bootstrap_delta,
    per_class_recall,
)

POLICY_FILE = Path(__file__).resolve().parents[2] / "policies" / "promotion.yaml"
CLASSES = ["acne", "eczema", "psoriasis", "nevus"]
POLICY = PromotionPolicy(margin=0.03, recall_floor=0.3, alpha=0.05, n_boot=1000, ci=0.95, seed=0)


def _corrupt(y: np.ndarray, wrong: np.ndarray, n_classes: int) -> np.ndarray:
    """Copy of ``y`` with the items in ``wrong`` moved to the next class."""
    pred = y.copy()
    pred[wrong] = (y[wrong] + 1) % n_classes
    return pred


@pytest.fixture()
def y() -> np.ndarray:
    return np.repeat(np.arange(len(CLASSES)), 100)


@pytest.fixture()
def champion(y: np.ndarray) -> np.ndarray:
    """Wrong on every 4th item: 75% accuracy, every class recall 0.75."""
    return _corrupt(y, np.arange(0, len(y), 4), len(CLASSES))


@pytest.fixture()
def better(y: np.ndarray) -> np.ndarray:
    """Wrong on every 12th item only (a subset of the champion's errors)."""
    return _corrupt(y, np.arange(0, len(y), 12), len(CLASSES))


def test_mcnemar_exact_matches_hand_computation_and_binomtest() -> None:
    y = np.zeros(20, dtype=int)
    a = np.array([0] * 3 + [1] * 10 + [0] * 7)  # a alone right on 0..2 (b=3)
    b = np.array([1] * 3 + [0] * 10 + [0] * 7)  # b alone right on 3..12 (c=10)
    res = mcnemar(y, a, b)
    hand = 2 * sum(math.comb(13, k) for k in range(4)) / 2**13  # two-sided P(X <= 3 | 13, 1/2)
    assert (res.b, res.c) == (3, 10)
    assert res.p_value == pytest.approx(hand, rel=1e-12)
    assert res.p_value == pytest.approx(stats.binomtest(3, 13, 0.5).pvalue, rel=1e-12)


def test_mcnemar_chi_square_with_continuity_correction_for_many_discordant() -> None:
    y = np.zeros(50, dtype=int)
    a = np.array([0] * 10 + [1] * 30 + [0] * 10)
    b = np.array([1] * 10 + [0] * 30 + [0] * 10)
    res = mcnemar(y, a, b)
    statistic = (abs(10 - 30) - 1) ** 2 / 40
    assert (res.b, res.c) == (10, 30)
    assert res.statistic == pytest.approx(statistic)
    assert res.p_value == pytest.approx(math.erfc(math.sqrt(statistic / 2)), rel=1e-9)


def test_mcnemar_without_discordant_pairs_is_not_significant(y: np.ndarray) -> None:
    assert mcnemar(y, y, y).p_value == 1.0


def test_per_class_recall_counts_hits_per_true_class() -> None:
    rec = per_class_recall([0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 0, 0], n_classes=3)
    assert rec[:2] == pytest.approx([0.5, 0.5])
    assert np.isnan(rec[2])


def test_bootstrap_point_delta_matches_sklearn_macro_f1() -> None:
    rng = np.random.default_rng(1)
    y, a, b = (rng.integers(0, 5, 200) for _ in range(3))
    res = paired_bootstrap_delta(y, a, b, n_boot=200)
    expected = f1_score(y, b, average="macro") - f1_score(y, a, average="macro")
    assert res.delta == pytest.approx(expected, abs=1e-12)
    assert res.lo <= res.delta <= res.hi


def test_bootstrap_ci_covers_the_population_delta() -> None:
    """Samples from a population with a known delta: the 90% CI covers it most of the time."""
    rng = np.random.default_rng(7)
    pop_y = rng.integers(0, 4, 20_000)
    pop_a = np.where(rng.random(pop_y.size) < 0.70, pop_y, rng.integers(0, 4, pop_y.size))
    pop_b = np.where(rng.random(pop_y.size) < 0.80, pop_y, rng.integers(0, 4, pop_y.size))
    true_delta = f1_score(pop_y, pop_b, average="macro") - f1_score(pop_y, pop_a, average="macro")
    covered = []
    for seed in range(30):
        idx = rng.choice(pop_y.size, 300, replace=False)
        res = paired_bootstrap_delta(pop_y[idx], pop_a[idx], pop_b[idx], n_boot=400, seed=seed, ci=0.9)
        covered.append(res.lo <= true_delta <= res.hi)
        assert res.hi - res.lo < 0.2
    assert np.mean(covered) >= 0.8


def test_bootstrap_is_reproducible_with_a_seed(y: np.ndarray, champion: np.ndarray, better: np.ndarray) -> None:
    first = paired_bootstrap_delta(y, champion, better, n_boot=300, seed=3)
    assert paired_bootstrap_delta(y, champion, better, n_boot=300, seed=3) == first


def test_better_challenger_is_promoted(y: np.ndarray, champion: np.ndarray, better: np.ndarray) -> None:
    decision = decide(y, better, champion, CLASSES, POLICY)
    assert decision.promote, decision.reason
    assert decision.numbers["macro_f1_delta"] > 0.1
    assert decision.numbers["macro_f1_delta_lo"] > 0


def test_challenger_given_as_probabilities_is_reduced_to_argmax(
    y: np.ndarray, champion: np.ndarray, better: np.ndarray
) -> None:
    probs = np.full((len(y), len(CLASSES)), 0.1)
    probs[np.arange(len(y)), better] = 0.7
    policy = PromotionPolicy(n_boot=1000, max_ece=None)
    from_probs, from_labels = decide(y, probs, champion, CLASSES, policy), decide(y, better, champion, CLASSES, policy)
    assert (from_probs.verdict, from_probs.reason) == (from_labels.verdict, from_labels.reason)
    accuracy = float(np.mean(better == y))  # one bin: ECE = accuracy - confidence
    assert from_probs.numbers["ece"] == pytest.approx(accuracy - 0.7, abs=1e-5)
    assert from_labels.numbers["ece"] is None  # labels carry no confidence


def _confident(pred: np.ndarray, top: float) -> np.ndarray:
    """Probabilities with ``top`` on ``pred`` and the rest spread evenly."""
    probs = np.full((len(pred), len(CLASSES)), (1 - top) / (len(CLASSES) - 1))
    probs[np.arange(len(pred)), pred] = top
    return probs


def test_gate_keeps_a_miscalibrated_challenger_and_promotes_the_same_answers_calibrated(
    y: np.ndarray, champion: np.ndarray, better: np.ndarray
) -> None:
    """``better`` is right on 11/12 of the images: at confidence 0.999 its ECE is ~0.08 (kept
    with max_ece 0.05); the same labels at confidence 11/12 have ECE ~0 (promoted). A first
    version is held to the rule too."""
    policy = PromotionPolicy(n_boot=1000, max_ece=0.05)
    over = decide(y, _confident(better, 0.999), champion, CLASSES, policy)
    assert not over.promote and over.reason.startswith("calibration: held-out ECE 0.08")
    assert over.numbers["max_ece"] == 0.05
    fair = decide(y, _confident(better, 11 / 12), champion, CLASSES, policy)
    assert fair.promote and fair.numbers["ece"] < 0.01
    first = decide(y, _confident(better, 0.999), None, CLASSES, policy)
    assert first.verdict == "kept" and first.reason.startswith("first version: calibration")
    assert decide(y, _confident(better, 0.999), None, CLASSES, PromotionPolicy(max_ece=None)).promote


def test_worse_challenger_stays_challenger(y: np.ndarray, champion: np.ndarray, better: np.ndarray) -> None:
    decision = decide(y, champion, better, CLASSES, POLICY)
    assert not decision.promote
    assert "not non-inferior" in decision.reason
    assert decision.numbers["macro_f1_delta"] < 0


def test_identical_challenger_is_a_tie_and_keeps_champion(y: np.ndarray, champion: np.ndarray) -> None:
    decision = decide(y, champion.copy(), champion, CLASSES, POLICY)
    assert not decision.promote
    assert decision.reason.startswith("not better beyond the noise")


def test_different_but_not_better_challenger_is_a_tie(y: np.ndarray, champion: np.ndarray) -> None:
    """Two errors fixed and two new ones in the same class: non-inferior, not better."""
    challenger = champion.copy()
    challenger[[0, 4]] = y[[0, 4]]
    challenger[[1, 5]] = (y[[1, 5]] + 1) % len(CLASSES)
    decision = decide(y, challenger, champion, CLASSES, POLICY)
    assert decision.numbers["macro_f1_delta"] <= 0
    assert decision.numbers["macro_f1_delta_lo"] > -POLICY.margin
    assert not decision.promote
    assert decision.reason.startswith("not better beyond the noise")


def test_class_recall_collapse_blocks_promotion_despite_better_macro_f1(y: np.ndarray, champion: np.ndarray) -> None:
    challenger = y.copy()
    nevus = np.flatnonzero(y == 3)
    challenger[nevus[:80]] = 0  # nevus recall 0.2, every other class perfect
    decision = decide(y, challenger, champion, CLASSES, POLICY)
    assert decision.numbers["macro_f1_delta"] > 0
    assert decision.numbers["per_class_recall"]["nevus"] == pytest.approx(0.2)
    assert not decision.promote
    assert "nevus" in decision.reason


def test_significantly_more_top1_errors_blocks_promotion_even_if_macro_f1_rises() -> None:
    """Challenger trades many majority-class hits for minority-class recall."""
    y = np.array([0] * 900 + [1] * 50 + [2] * 50)
    champion = y.copy()
    champion[900:950:2] = 0  # class 1 recall 0.5
    champion[950:1000:2] = 0  # class 2 recall 0.5
    challenger = y.copy()
    challenger[:100] = 1  # 100 class-0 errors, minority classes now perfect
    policy = PromotionPolicy(margin=0.5, recall_floor=0.3, n_boot=300)
    decision = decide(y, challenger, champion, ["a", "b", "c"], policy)
    assert decision.numbers["macro_f1_delta"] > 0
    assert decision.numbers["mcnemar_b"] > decision.numbers["mcnemar_c"]
    assert decision.numbers["mcnemar_p"] < policy.alpha
    assert not decision.promote
    assert "McNemar" in decision.reason


def test_recall_floor_fires_on_evidence_not_on_one_image_of_a_small_class() -> None:
    """The isic9 case: melanoma 4/16 (0.25 under a 0.30 floor by one image) and a class with one
    test image missed do not block a first version; a class at 0/16 or 1/16 does. The bound is
    the one-sided 95% Clopper-Pearson one (scipy's exact two-sided 90% interval's upper end)."""
    from ml.eval.gate import recall_upper_bounds

    classes = ["melanoma", "rare", "nevus"]
    y = np.array([0] * 16 + [1] + [2] * 16)

    def pred(melanoma_right: int, rare_right: bool) -> np.ndarray:
        p = y.copy()
        p[melanoma_right:16] = 2  # the rest of the melanomas called nevus
        if not rare_right:
            p[16] = 0
        return p

    noisy = decide(y, pred(4, False), None, classes, PromotionPolicy())
    assert noisy.promote, noisy.reason
    assert noisy.numbers["per_class_recall"]["melanoma"] == 0.25
    upper = recall_upper_bounds(y, pred(4, False), 3, 0.95)
    assert upper[0] == pytest.approx(stats.binomtest(4, 16).proportion_ci(0.90, "exact").high, abs=1e-9)
    assert upper[1] == pytest.approx(0.95) and upper[2] == 1.0
    for right in (0, 1):
        collapsed = decide(y, pred(right, True), None, classes, PromotionPolicy())
        assert not collapsed.promote and collapsed.numbers["classes_below_floor"] == ["melanoma"]
    with pytest.raises(ValueError, match="recall_floor_confidence"):
        PromotionPolicy(recall_floor_confidence=0.3)


def test_first_version_promoted_iff_every_class_clears_the_floor(y: np.ndarray, champion: np.ndarray) -> None:
    assert decide(y, champion, None, CLASSES, POLICY).promote
    collapsed = y.copy()
    collapsed[y == 2] = 1
    decision = decide(y, collapsed, None, CLASSES, POLICY)
    assert not decision.promote
    assert decision.numbers["classes_below_floor"] == ["psoriasis"]


def test_shipped_policy_file_loads_and_rejects_unknown_keys() -> None:
    policy = PromotionPolicy.load(POLICY_FILE)
    assert 0 < policy.margin < 0.2 and 0 < policy.recall_floor < 1 and policy.n_boot >= 1000
    with pytest.raises(ValueError, match="unknown"):
        PromotionPolicy.from_mapping({"margn": 0.1})
    assert decide([0, 1], [0, 1], None, ["a", "b"], {"recall_floor": 0.5}).promote


def test_heldout_digest_identifies_pixels_labels_order_and_classes() -> None:
    from ml.eval.gate import heldout_digest

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2])
    classes = ["a", "b", "c"]
    base = heldout_digest(images, labels, classes)
    assert heldout_digest(images.copy(), list(labels), list(classes)) == base
    pixel = images.copy()
    pixel[3, 4, 4, 1] ^= 1
    changed = [
        heldout_digest(pixel, labels, classes),
        heldout_digest(images, np.array([0, 1, 2, 0, 2, 2]), classes),
        heldout_digest(images[::-1], labels[::-1], classes),
        heldout_digest(images, labels, ["a", "c", "b"]),
        heldout_digest(images.reshape(6, 8, 24, 1), labels, classes),
    ]
    assert len({base, *changed}) == 6


# --- the decision rule's error rates on simulated retrains ---------------------------------------

SIM_CLASSES = [f"c{i}" for i in range(10)]
SIM_PRIOR = np.geomspace(1.0, 0.25, len(SIM_CLASSES)) / np.geomspace(1.0, 0.25, len(SIM_CLASSES)).sum()


def simulated_retrain(
    rng: np.random.Generator, n: int, acc_champion: float, acc_challenger: float, correlation: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(y, champion, challenger)`` on ``n`` images of a mildly long-tailed 10-class set.

    Each model is right on an image when ``sqrt(c) * difficulty + sqrt(1 - c) * own noise`` (all
    standard normal) is below the quantile of its accuracy, else it predicts a random other class:
    the two models share the hard images (``c=0.8``: they agree on right/wrong for ~82% of the
    images, as two retrains of one architecture on one dataset do). With uniform errors a model's
    expected macro-F1 is about its accuracy, so +0.05 accuracy is +5 macro-F1 points."""
    y = rng.choice(len(SIM_CLASSES), n, p=SIM_PRIOR)
    difficulty = rng.standard_normal(n)

    def predictions(acc: float) -> np.ndarray:
        z = np.sqrt(correlation) * difficulty + np.sqrt(1 - correlation) * rng.standard_normal(n)
        wrong = (y + rng.integers(1, len(SIM_CLASSES), n)) % len(SIM_CLASSES)
        return np.where(z < stats.norm.ppf(acc), y, wrong)

    return y, predictions(acc_champion), predictions(acc_challenger)


def promotion_rate(gain: float, repetitions: int, n: int = 400, correlation: float = 0.8, seed: int = 0) -> float:
    """Share of simulated retrains in which the shipped rule promotes a challenger ``gain`` more
    accurate than the champion (500 resamples instead of 2000: the same percentile bounds, a
    little noisier)."""
    from dataclasses import replace

    policy = replace(PromotionPolicy.load(POLICY_FILE), n_boot=500)
    rng = np.random.default_rng(seed)
    promoted = 0
    for _ in range(repetitions):
        y, champion, challenger = simulated_retrain(rng, n, 0.70, 0.70 + gain, correlation)
        promoted += decide(y, challenger, champion, SIM_CLASSES, policy).promote
    return promoted / repetitions


def test_a_challenger_of_the_same_quality_rarely_replaces_the_champion() -> None:
    """Two equally good models: the old rule (non-inferior and any positive delta) swapped them
    in 35% of these retrains; superiority at one-sided 95% in 7.5% (200 retrains, 400 images)."""
    assert promotion_rate(0.0, repetitions=200) <= 0.10


def test_a_challenger_better_by_five_points_is_promoted_in_most_retrains() -> None:
    """75.5% of these retrains (the old rule: 95%; see the policy file for other set sizes and
    agreements)."""
    assert promotion_rate(0.05, repetitions=200) >= 0.6


def test_disjoint_heldout_keeps_what_no_model_trained_on() -> None:
    from ml.eval.gate import disjoint_heldout

    held = ["a", "b", "c", "d", "e"]
    out = disjoint_heldout(held, {"challenger": {"b", "x"}, "champion": ["b", "d"], "unknown": None})
    assert out.keep.tolist() == [True, False, True, False, True]
    assert out.overlap == {"challenger": 1, "champion": 2, "unknown": None} and out.evaluated_on == 3
    assert disjoint_heldout([], {"challenger": {"a"}}).evaluated_on == 0


def test_every_decision_carries_its_verdict(y: np.ndarray, champion: np.ndarray, better: np.ndarray) -> None:
    from ml.eval.gate import GateDecision

    assert decide(y, better, champion, CLASSES, POLICY).verdict == "promoted"
    assert decide(y, champion, better, CLASSES, POLICY).verdict == "kept"
    assert decide(y, champion, None, CLASSES, POLICY).verdict == "promoted"
    collapsed = np.where(y == 2, 1, y)
    assert decide(y, collapsed, None, CLASSES, POLICY).verdict == "kept"
    with pytest.raises(ValueError, match="verdict"):
        GateDecision("maybe", "no such verdict")


def test_too_few_disjoint_images_refuse_and_enough_decide(
    y: np.ndarray, champion: np.ndarray, better: np.ndarray
) -> None:
    from ml.eval.gate import decide_on_heldout, disjoint_heldout, refuse_if_too_few_disjoint

    digests = [f"img{i}" for i in range(len(y))]
    policy = PromotionPolicy(n_boot=300, min_disjoint_heldout=250)
    few = disjoint_heldout(digests, {"challenger": None, "champion": digests[:200]})  # 200 left
    refusal = decide_on_heldout(y, better, champion, CLASSES, policy, few)
    assert refusal == refuse_if_too_few_disjoint(few, len(y), policy)
    assert refusal.verdict == "refused" and not refusal.promote
    assert refusal.reason.startswith("refused: only 200 of 400") and "min_disjoint_heldout=250" in refusal.reason
    assert refusal.numbers == {"min_disjoint_heldout": 250}
    enough = disjoint_heldout(digests, {"challenger": digests[:100], "champion": None})  # 300 left
    assert refuse_if_too_few_disjoint(enough, len(y), policy) is None
    decision = decide_on_heldout(y, better, champion, CLASSES, policy, enough)
    direct = decide(y[enough.keep], better[enough.keep], champion[enough.keep], CLASSES, policy)
    assert (decision.verdict, decision.reason) == (direct.verdict, direct.reason) == ("promoted", direct.reason)
    first = decide_on_heldout(y, better, None, CLASSES, policy, enough)
    assert first.verdict == "promoted" and first.reason.startswith("first version")


def test_a_version_an_earlier_attempt_promoted_stays_promoted(y: np.ndarray, champion: np.ndarray) -> None:
    from ml.eval.gate import after_earlier_promotion

    tie = decide(y, champion, champion, CLASSES, POLICY)
    assert tie.verdict == "kept"
    again = after_earlier_promotion(tie)
    assert again.verdict == "promoted" and again.promote and again.numbers == tie.numbers
    assert again.reason == f"already champion (alias moved by an earlier attempt); re-evaluation: {tie.reason}"
    promoted = decide(y, champion, None, CLASSES, POLICY)
    assert after_earlier_promotion(promoted) is promoted
