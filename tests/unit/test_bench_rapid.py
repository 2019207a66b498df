"""bench-rapid's reading of its runs: points per budget, the time to reach fastai's accuracy
(linear between budgets) and the goal line."""

from __future__ import annotations

import pytest

from bench.bench_rapid import goal_lines, points, time_to_reach


def _run(side: str, epochs: int, seed: int, wall: float, acc: float) -> dict:
    return {
        "side": side,
        "epochs": epochs,
        "seed": seed,
        "wall_seconds": wall,
        "test_balanced_accuracy": acc,
        "test_macro_f1": acc - 0.05,
    }


RUNS = [
    _run("fastai", 5, 0, 360.0, 0.54),
    _run("fastai", 5, 1, 340.0, 0.52),
    _run("skinflow", 3, 0, 100.0, 0.50),
    _run("skinflow", 5, 0, 200.0, 0.60),
]


def test_points_are_means_per_budget():
    assert points(RUNS, "fastai") == [(5, 350.0, pytest.approx(0.53), pytest.approx(0.48))]
    assert [p[0] for p in points(RUNS, "skinflow")] == [3, 5]


def test_time_to_reach_interpolates_between_budgets_and_says_when_never():
    curve = points(RUNS, "skinflow")
    assert time_to_reach(curve, 0.55) == pytest.approx(150.0)
    assert time_to_reach(curve, 0.25) == 100.0, "never sooner than the first budget's whole run"
    assert time_to_reach(curve, 0.61) is None


def test_goal_line_gives_the_ratio_and_the_verdict():
    (line,) = goal_lines(RUNS)
    assert "0.530 in 350 s" in line and "reached it in 130 s: 0.37x" in line and "**met**" in line
    (line,) = goal_lines([r for r in RUNS if r["epochs"] != 5 or r["side"] == "fastai"])
    assert "did not reach it (best 0.500 at 3 epochs, 100 s)" in line


def test_a_rerun_that_reuses_the_range_test_has_its_own_goal_line():
    runs = RUNS + [_run("skinflow-rerun", 3, 0, 70.0, 0.54), _run("skinflow-rerun", 5, 0, 170.0, 0.60)]
    first, rerun = goal_lines(runs)
    assert first.endswith("0.37x fastai's time; goal (<= 0.5x) **met**.") and "skinflow reached" in first
    assert "skinflow-rerun reached it in 70 s: 0.20x" in rerun  # at its first budget, not interpolated below
