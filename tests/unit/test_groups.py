"""Per-group metrics (Fairlearn's MetricFrame) and the gate's skin-tone rule on a planted gap: a
challenger better on average but worse on the dark-skin group is kept out; one as good on every
group is not held back by the rule."""

from __future__ import annotations

import numpy as np
import pytest

from ml.eval.gate import PromotionPolicy, decide
from ml.eval.groups import group_loss_problem, group_metrics, wilson

CLASSES = [f"c{i}" for i in range(4)]


def _planted(seed: int = 0):
    """600 light-skin and 60 dark-skin images; the champion is right on 80% of each group; the
    challenger on 95% of light skin but only 50% of dark skin (the gap a new model widens)."""
    rng = np.random.default_rng(seed)
    groups = np.array(["light"] * 600 + ["dark"] * 60, dtype=object)
    y = rng.integers(0, 4, len(groups))

    def model(p_light: float, p_dark: float) -> np.ndarray:
        right = rng.random(len(y)) < np.where(groups == "light", p_light, p_dark)
        return np.where(right, y, (y + rng.integers(1, 4, len(y))) % 4)

    return y, groups, model(0.80, 0.80), model(0.95, 0.50), model(0.95, 0.80)


def test_group_metrics_count_each_group_with_an_interval():
    y, groups, champion, _, _ = _planted()
    table = group_metrics(y, champion, groups).set_index("group")
    assert table.loc["light", "n"] == 600 and table.loc["dark", "n"] == 60
    for g in ("light", "dark"):
        assert table.loc[g, "accuracy_lo"] <= table.loc[g, "accuracy"] <= table.loc[g, "accuracy_hi"]
    assert 0.7 < table.loc["light", "balanced_accuracy"] < 0.9
    assert wilson(0, 0) != wilson(0, 0)  # NaN for no images
    assert wilson(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-3)


def test_the_gate_keeps_a_champion_against_a_challenger_that_widens_the_gap():
    y, groups, champion, wider, fair = _planted()
    policy = PromotionPolicy(n_boot=500, max_group_loss=0.10, min_group_support=30)
    blind = decide(y, wider, champion, CLASSES, policy)  # no groups given: the average wins
    assert blind.promote, blind.reason
    seen = decide(y, wider, champion, CLASSES, policy, groups)
    assert not seen.promote and "skin-tone group dark" in seen.reason and "max_group_loss 0.1" in seen.reason
    rows = {r["group"]: r for r in seen.numbers["skin_tone_groups"]["groups"]}
    assert rows["dark"]["loss"] > 0.10 and rows["light"]["loss"] < 0
    assert decide(y, fair, champion, CLASSES, policy, groups).promote  # better everywhere: promoted
    off = PromotionPolicy(n_boot=500, max_group_loss=None)
    assert decide(y, wider, champion, CLASSES, off, groups).promote


def test_small_and_unknown_groups_are_not_read_by_the_rule():
    y, groups, champion, wider, _ = _planted()
    for renamed, support in (("unknown", 30), ("dark", 61)):
        g = np.where(groups == "dark", renamed, groups)
        reason, numbers = group_loss_problem(y, champion, wider, g, 0.10, support)
        assert reason is None and {r["group"] for r in numbers["groups"]} == {"light", renamed}
