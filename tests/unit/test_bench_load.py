"""bench/bench_load.py's reading of the workers' logs and its exactly-once check."""

from __future__ import annotations

from bench.bench_load import check_exactly_once, worker_submissions

A, B, C = (
    "a" * 8 + "-0000-0000-0000-" + "0" * 12,
    "b" * 8 + "-0000-0000-0000-" + "0" * 12,
    "c" * 8 + "-0000-0000-0000-" + "0" * 12,
)
LINE = "01:38:06.461 | INFO    | prefect.flow_runs.worker - "


def test_a_refused_second_submission_is_not_a_second_start(tmp_path) -> None:
    (tmp_path / "worker.log").write_text(
        f"{LINE}Worker 'skinflow-pool-worker-1' submitting flow run '{A}'\n"
        f"{LINE}Worker 'skinflow-pool-worker-1' submitting flow run '{B}'\n"
        f"{LINE}Aborted submission of flow run '{B}'. Server sent an abort signal: This run is in a PENDING state\n"
    )
    (tmp_path / "worker2.log").write_text(
        f"{LINE}Worker 'skinflow-pool-worker-2' submitting flow run '{B}'\n"
        f"{LINE}Worker 'skinflow-pool-worker-2' submitting flow run '{C}'\n"
        f"{LINE}Worker 'skinflow-pool-worker-2' submitting flow run '{C}'\n"
    )
    started, refused = worker_submissions(tmp_path)
    assert started == {A: ["worker"], B: ["worker2"], C: ["worker2", "worker2"]}
    assert refused == {B: ["worker"]}


def _result(**changes):
    ids = [A, B]
    res = {
        "n": 2,
        "submitted_ids": ids,
        "runs_seen": 2,
        "run_ids_seen": sorted(ids),
        "states": ["COMPLETED"] * 2,
        "run_counts": [1, 1],
        "task_runs_per_flow_run": [1, 1],
        "task_states": ["COMPLETED"] * 2,
        "worker_submissions": {A: ["worker"], B: ["worker2"]},
        "mlflow_flow_run_ids": sorted(ids),
    }
    return {**res, **changes}


def test_the_check_names_each_way_a_run_is_lost_or_duplicated() -> None:
    assert check_exactly_once(_result()) == []
    assert "lists 1 runs" in check_exactly_once(_result(runs_seen=1, run_ids_seen=[A]))[0]
    assert "states" in check_exactly_once(_result(states=["COMPLETED", "CRASHED"]))[0]
    assert "run counts" in check_exactly_once(_result(run_counts=[1, 2]))[0]
    assert "task runs" in check_exactly_once(_result(task_runs_per_flow_run=[1, 2]))[0]
    assert "exactly one worker" in check_exactly_once(_result(worker_submissions={A: ["worker"], B: []}))[0]
    assert "MLflow has 3" in check_exactly_once(_result(mlflow_flow_run_ids=sorted([A, B, B])))[0]


def test_the_report_states_the_load_before_each_stack_and_reads_the_two_back_ends():
    import argparse

    from bench.bench_load import report

    def result(profile, per_run, locked, start):
        return {
            "profile": profile,
            "n": 20,
            "per_worker": {"worker": 12, "worker2": 8},
            "pool_limit": 4,
            "states": ["COMPLETED"] * 20,
            "problems": [],
            "wall_s": 20 * per_run,
            "wall_per_run_s": per_run,
            "latency_median_s": 40.0,
            "latency_max_s": 70.0,
            "run_median_s": 3.0,
            "refused_duplicate_submissions": 0,
            "api_retries": 0,
            "server_db_locked_lines": locked,
            "load_average_at_start": start,
        }

    text = report(
        [result("sqlite", 4.0, 114, [0.4, 0.5, 0.6]), result("postgres", 5.0, 0, [5.5, 3.0, 2.0])],
        argparse.Namespace(runs=20, pool_limit=4),
    )
    assert "sqlite 0.4, postgres 5.5" in text
    assert "shared with other jobs" in text  # 5.5 on 2 cores before the postgres stack started
    assert "5.00 s per run on Postgres against 4.00 s on sqlite (1.25x)" in text
    assert "'database is locked' 114 times" in text and "Postgres one 0 times" in text
    quiet = report([result("sqlite", 4.0, 1, [0.3, 0.2, 0.1])], argparse.Namespace(runs=20, pool_limit=4))
    assert "nothing else competed" in quiet and "Reading" not in quiet  # one back end: nothing to compare


def test_settle_waits_while_the_load_is_high_and_gives_up_at_its_timeout():
    import time

    from bench.bench_load import settle

    t0 = time.monotonic()
    quiet = settle(cores=10**6, timeout=30)  # always below: returns at once
    assert time.monotonic() - t0 < 1 and len(quiet) == 3
    t0 = time.monotonic()
    busy = settle(cores=0, timeout=0.3, poll=0.05)  # never below 0: waits out its timeout
    assert 0.3 <= time.monotonic() - t0 < 2 and len(busy) == 3
