"""bench/bench_load.py's reading of the workers' logs and its exactly-once check."""

from __future__ import annotations

from bench.bench_load import check_exactly_once, worker_submissions

A, B, C = ("a" * 8 + "-0000-0000-0000-" + "0" * 12, "b" * 8 + "-0000-0000-0000-" + "0" * 12,
           "c" * 8 + "-0000-0000-0000-" + "0" * 12)
LINE = "01:38:06.461 | INFO    | prefect.flow_runs.worker - "


def test_a_refused_second_submission_is_not_a_second_start(tmp_path) -> None:
    (tmp_path / "worker.log").write_text(
        f"{LINE}Worker 'skinflow-pool-worker-1' submitting flow run '{A}'\n"
        f"{LINE}Worker 'skinflow-pool-worker-1' submitting flow run '{B}'\n"
        f"{LINE}Aborted submission of flow run '{B}'. Server sent an abort signal: This run is in a PENDING state\n")
    (tmp_path / "worker2.log").write_text(f"{LINE}Worker 'skinflow-pool-worker-2' submitting flow run '{B}'\n"
                                          f"{LINE}Worker 'skinflow-pool-worker-2' submitting flow run '{C}'\n"
                                          f"{LINE}Worker 'skinflow-pool-worker-2' submitting flow run '{C}'\n")
    started, refused = worker_submissions(tmp_path)
    assert started == {A: ["worker"], B: ["worker2"], C: ["worker2", "worker2"]}
    assert refused == {B: ["worker"]}


def _result(**changes):
    ids = [A, B]
    res = {"n": 2, "submitted_ids": ids, "runs_seen": 2, "run_ids_seen": sorted(ids), "states": ["COMPLETED"] * 2,
           "run_counts": [1, 1], "task_runs_per_flow_run": [1, 1], "task_states": ["COMPLETED"] * 2,
           "worker_submissions": {A: ["worker"], B: ["worker2"]}, "mlflow_flow_run_ids": sorted(ids)}
    return {**res, **changes}


def test_the_check_names_each_way_a_run_is_lost_or_duplicated() -> None:
    assert check_exactly_once(_result()) == []
    assert "lists 1 runs" in check_exactly_once(_result(runs_seen=1, run_ids_seen=[A]))[0]
    assert "states" in check_exactly_once(_result(states=["COMPLETED", "CRASHED"]))[0]
    assert "run counts" in check_exactly_once(_result(run_counts=[1, 2]))[0]
    assert "task runs" in check_exactly_once(_result(task_runs_per_flow_run=[1, 2]))[0]
    assert "exactly one worker" in check_exactly_once(_result(worker_submissions={A: ["worker"], B: []}))[0]
    assert "MLflow has 3" in check_exactly_once(_result(mlflow_flow_run_ids=sorted([A, B, B])))[0]
