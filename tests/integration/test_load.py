"""Bounded load on the team stack: 20 short flow runs (bench/load_flow.py) queued at once on the
pool that two workers serve; every run completes exactly once, as the Prefect API, the workers'
logs and MLflow report it. Times per run are measured by bench/bench_load.py (bench/RESULTS.md),
not asserted here."""

from __future__ import annotations

import pytest

from bench.bench_load import check_exactly_once, run_load

pytestmark = pytest.mark.slow


def test_twenty_runs_on_two_workers_complete_exactly_once(team_stack) -> None:
    res = run_load(team_stack, n=20, pool_limit=4, timeout=600)
    assert check_exactly_once(res) == [], res
    assert len(res["submitted_ids"]) == len(set(res["submitted_ids"])) == 20
    # both workers of the pool are there to take runs; the split between them is reported, not fixed
    assert sum(res["per_worker"].values()) == 20 and set(res["per_worker"]) <= {"worker", "worker2"}
