"""Load on the stack: N short flow runs (bench/load_flow.py) queued at once on the work pool with
two workers, sqlite and PostgreSQL back ends side by side.

For each profile, start ``infra/stack.sh up --db <profile>`` on free 127.0.0.1 ports with two
workers (``SKINFLOW_WORKERS=2``; the sqlite profile's default is one).

Then deploy bench/load.prefect.yaml, create N flow runs through the Prefect REST API, wait until
every one is terminal, and check through the API, the workers' logs and MLflow that every run
completed exactly once (none lost, none duplicated). Times per run: the wall time from the first
submission to the last end divided by N, and each run's latency (created -> end).

``--results bench/RESULTS.md`` replaces the section between ``<!-- load:start -->`` and
``<!-- load:end -->``; raw results go to ``bench/out/bench_load.json``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.common import (
    REPO,
    command_line,
    cpu_model,
    fmt,
    git_commit,
    load_average,
    load_remark,
    md_table,
    replace_section,
    usable_cores,
    write_json,
)
from infra.local_stack import Stack

SECTION = "load"
DEFAULT_JSON = REPO / "bench" / "out" / "bench_load.json"
PREFECT = str(Path(sys.executable).parent / "prefect")
DEPLOYMENT = "load-probe/load"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
# what a Prefect worker logs when it takes a flow run off the pool, and when the server refuses it
# that run because another worker moved it to PENDING first (both workers polled the same run)
SUBMIT = re.compile(r"submitting flow run '([0-9a-f-]{36})'", re.I)
# (Prefect 3.9 workers/base.py _propose_pending_state: an Abort, a non-pending answer such as a
# WAIT for a pool concurrency slot, or a failed state update; in each case the worker starts nothing)
ABORT = re.compile(r"(?:Aborted submission of|Failed to update state of) flow run '([0-9a-f-]{36})'", re.I)


class _Api:
    """The Prefect REST API, retrying 429/503 (a busy or locked database) with backoff as Prefect's
    own client does (PREFECT_CLIENT_MAX_RETRIES); the retries are counted and reported."""

    def __init__(self, env: dict[str, str], attempts: int = 8):
        import httpx

        from infra.local_stack import api_auth

        self.client, self.attempts, self.retries = (
            httpx.Client(base_url=env["PREFECT_API_URL"], auth=api_auth(env), timeout=60),
            attempts,
            0,
        )

    def call(self, method: str, url: str, **kw) -> Any:
        for attempt in range(self.attempts):
            r = self.client.request(method, url, **kw)
            if r.status_code not in (429, 503) or attempt == self.attempts - 1:
                return r.raise_for_status().json()
            self.retries += 1
            time.sleep(min(0.5 * 2**attempt, 8))

    def close(self) -> None:
        self.client.close()


def _t(stamp: str | None) -> float | None:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() if stamp else None


def worker_submissions(log_dir: Path) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """From the workers' logs: run id -> the workers that started it, and run id -> the workers
    whose submission the server refused."""
    submitted: dict[str, list[str]] = {}
    aborted: dict[str, list[str]] = {}
    for log in sorted(log_dir.glob("worker*.log")):
        text = log.read_text(errors="replace")
        refused = ABORT.findall(text)
        for run_id in refused:
            aborted.setdefault(run_id, []).append(log.stem)
        for run_id in SUBMIT.findall(text):
            if run_id in refused:
                refused.remove(run_id)
            else:
                submitted.setdefault(run_id, []).append(log.stem)
    return submitted, aborted


def run_load(stack: Stack, n: int = 20, pool_limit: int | None = 4, timeout: float = 600) -> dict[str, Any]:
    """Queue ``n`` load-probe runs on ``stack``'s pool and wait for all; returns what happened.

    ``pool_limit`` caps how many flow runs the pool runs at once (both workers together; each flow
    run is a Python process). It is set for the benchmark and cleared afterwards."""
    from mlflow import MlflowClient

    env = stack.client_env()
    deploy = subprocess.run(
        [PREFECT, "--no-prompt", "deploy", "--prefect-file", "bench/load.prefect.yaml", "--all"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if deploy.returncode != 0:
        raise RuntimeError(deploy.stdout[-2000:] + deploy.stderr[-2000:])
    mlflow = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment_id = mlflow.create_experiment(f"skinflow-load-{int(time.time() * 1000)}")
    pool = "skinflow-pool"
    if pool_limit:
        subprocess.run(
            [PREFECT, "work-pool", "set-concurrency-limit", pool, str(pool_limit)],
            env=env,
            check=True,
            capture_output=True,
            timeout=120,
        )
    api = _Api(env)
    try:
        deployment = api.call("GET", f"/deployments/name/{DEPLOYMENT}")
        t0 = time.time()
        ids = []
        for i in range(n):
            ids.append(
                api.call(
                    "POST",
                    f"/deployments/{deployment['id']}/create_flow_run",
                    json={"parameters": {"i": i, "experiment_id": experiment_id}},
                )["id"]
            )
        deadline = time.time() + timeout
        while True:
            runs = api.call(
                "POST",
                "/flow_runs/filter",
                json={"flow_runs": {"deployment_id": {"any_": [deployment["id"]]}}, "limit": 200},
            )
            if sum(r["state_type"] in TERMINAL for r in runs) >= n or time.time() > deadline:
                break
            time.sleep(1)
        t1 = time.time()
        task_runs = api.call("POST", "/task_runs/filter", json={"flow_runs": {"id": {"any_": ids}}, "limit": 200})
    finally:
        if pool_limit:
            subprocess.run(
                [PREFECT, "work-pool", "clear-concurrency-limit", pool], env=env, capture_output=True, timeout=120
            )
        api.close()
    submitted, aborted = worker_submissions(stack.run_dir / "logs")
    recorded = [r.data.tags.get("flow_run_id") for r in mlflow.search_runs([experiment_id], max_results=1000)]
    latencies = [_t(r["end_time"]) - _t(r["created"]) for r in runs if r["end_time"]]
    durations = [_t(r["end_time"]) - _t(r["start_time"]) for r in runs if r["end_time"] and r["start_time"]]
    per_worker: dict[str, int] = {}
    for run_id in ids:
        for w in submitted.get(run_id, []):
            per_worker[w] = per_worker.get(w, 0) + 1
    return {
        "profile": stack.profile,
        "n": n,
        "pool_limit": pool_limit,
        "workers": sorted(per_worker),
        "submitted_ids": ids,
        "runs_seen": len(runs),
        "states": sorted(r["state_type"] for r in runs),
        "run_counts": sorted(r["run_count"] for r in runs),
        "run_ids_seen": sorted(r["id"] for r in runs),
        "task_runs_per_flow_run": sorted(sum(t["flow_run_id"] == i for t in task_runs) for i in ids),
        "task_states": sorted(t["state_type"] for t in task_runs),
        "worker_submissions": {i: submitted.get(i, []) for i in ids},
        "refused_duplicate_submissions": sum(len(aborted.get(i, [])) for i in ids),
        "api_retries": api.retries,
        "server_db_locked_lines": (stack.run_dir / "logs" / "prefect.log")
        .read_text(errors="replace")
        .count("database is locked"),
        "per_worker": per_worker,
        "mlflow_flow_run_ids": sorted(x for x in recorded if x),
        "wall_s": t1 - t0,
        "wall_per_run_s": (t1 - t0) / n,
        "latency_median_s": statistics.median(latencies) if latencies else None,
        "latency_max_s": max(latencies) if latencies else None,
        "run_median_s": statistics.median(durations) if durations else None,
    }


def check_exactly_once(res: dict[str, Any]) -> list[str]:
    """What is wrong with a load result (empty: every run completed exactly once)."""
    n, ids = res["n"], sorted(res["submitted_ids"])
    problems = []
    if res["run_ids_seen"] != ids:
        problems.append(f"the API lists {res['runs_seen']} runs of the deployment, not the {n} submitted")
    if res["states"] != ["COMPLETED"] * n:
        problems.append(f"states: {res['states']}")
    if res["run_counts"] != [1] * n:
        problems.append(f"run counts (executions per flow run): {res['run_counts']}")
    if res["task_runs_per_flow_run"] != [1] * n or set(res["task_states"]) != {"COMPLETED"}:
        problems.append(f"task runs per flow run {res['task_runs_per_flow_run']}, states {set(res['task_states'])}")
    if sorted(len(w) for w in res["worker_submissions"].values()) != [1] * n:
        problems.append(
            "runs not started by exactly one worker: "
            f"{ {i: w for i, w in res['worker_submissions'].items() if len(w) != 1} }"
        )
    if res["mlflow_flow_run_ids"] != ids:
        problems.append(f"MLflow has {len(res['mlflow_flow_run_ids'])} load runs for {n} flow runs")
    return problems


def _start(profile: str, root: Path) -> Stack:
    """A stack of ``profile`` with two workers on the pool."""
    stack = Stack(root / f"stack-{profile}", profile)
    stack.script_env["SKINFLOW_WORKERS"] = "2"
    return stack.start()


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    rows = []
    for r in results:
        rows.append(
            [
                r["profile"],
                str(r["n"]),
                str(len(r["per_worker"])),
                str(r["pool_limit"]),
                f"{sum(s == 'COMPLETED' for s in r['states'])}/{r['n']}",
                "yes" if not r["problems"] else "**no** (below)",
                fmt(r["wall_s"], ".1f"),
                fmt(r["wall_per_run_s"], ".2f"),
                fmt(r["latency_median_s"], ".1f"),
                fmt(r["latency_max_s"], ".1f"),
                fmt(r["run_median_s"], ".2f"),
                " / ".join(f"{w}: {c}" for w, c in sorted(r["per_worker"].items())),
                str(r["refused_duplicate_submissions"]),
                str(r["api_retries"]),
                str(r["server_db_locked_lines"]),
            ]
        )
    table = md_table(
        [
            "back end",
            "runs",
            "workers",
            "pool limit",
            "completed",
            "exactly once",
            "wall s",
            "wall s / run",
            "latency median s",
            "latency max s",
            "run median s",
            "runs per worker",
            "second submissions refused",
            "API 429/503 retries",
            "'database is locked' in server log",
        ],
        rows,
    )
    problems = "".join(f"- {r['profile']}: {p}\n" for r in results for p in r["problems"])
    problems = f"\nWhat the exactly-once check found:\n\n{problems}" if problems else ""
    load = load_average()
    by = {r["profile"]: r for r in results}
    reading = ""
    if {"sqlite", "postgres"} <= set(by):
        sq, pg = by["sqlite"], by["postgres"]
        reading = (
            f"- Reading: {pg['wall_per_run_s']:.2f} s per run on Postgres against {sq['wall_per_run_s']:.2f} s on "
            f"sqlite ({pg['wall_per_run_s'] / sq['wall_per_run_s']:.2f}x); a run's cost is its flow-run process "
            f"start, not the database. The sqlite Prefect server logged 'database is locked' "
            f"{sq['server_db_locked_lines']} times (it retries them) and the Postgres one "
            f"{pg['server_db_locked_lines']} times: the lock contention of sqlite grows with concurrent runs, "
            "which is why the team stack keeps Prefect on Postgres.\n"
        )
    starts = [r.get("load_average_at_start") for r in results]
    start_text = ", ".join(f"{r['profile']} {fmt(st[0], '.1f') if st else 'unknown'}" for r, st in zip(results, starts))
    return f"""## Load: {args.runs} short flow runs on two workers (`make bench-load` = `python -m bench.bench_load`)

Each back end: `infra/stack.sh up --db <sqlite|postgres>` on free 127.0.0.1 ports (moto S3, MLflow
server, Prefect server; PostgreSQL 15 for both servers' metadata in the postgres profile), two
Prefect process workers on `skinflow-pool`, then {args.runs} runs of `load-probe/load`
(bench/load_flow.py: one task recording one MLflow run) created at once through the Prefect API,
with the pool's concurrency limit at {args.pool_limit} (each flow run is its own Python process).
"Exactly once": the API lists exactly the submitted runs, all COMPLETED with run_count 1 and one
completed task run each, each taken off the pool by exactly one worker (worker logs), and MLflow
holds one run per flow run id. "Second submissions refused": both workers polled the same run and
the server turned the later one away (the run was PENDING already), as it should. "API retries":
requests of this benchmark answered 429/503 and retried with backoff (Prefect's client does the
same); the last column counts the sqlite lock errors in the Prefect server's log. Latency: flow run created -> ended; wall s / run: first submission
to the last end, over the number of runs.

{table}
{problems}
- Machine: {cpu_model()}, {usable_cores()} usable cores. 1-min load before each back end's stack started:
  {start_text}, so {load_remark(*starts, cores=usable_cores())}. The load during a run
  (at the end {load}) is the bench's own: the servers, two workers and up to {results[0]["pool_limit"]} flow-run
  processes. Each flow run's process start (Python, Prefect, MLflow
  imports) dominates a run, so these are times per run of this stack on this machine, not of the
  databases alone. One measurement per back end, run one after the other.
{reading}- Commit {git_commit()}; command: `{command_line()}`.
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--pool-limit", type=int, default=4, help="flow runs at once on the pool (0: no limit)")
    p.add_argument("--profiles", nargs="+", default=["sqlite", "postgres"], choices=["sqlite", "postgres"])
    p.add_argument("--timeout", type=float, default=900, help="seconds to wait for the runs of one back end")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help="raw results")
    p.add_argument("--results", type=Path, default=None, help="markdown file whose load section is replaced")
    return p.parse_args(argv)


def settle(cores: int, timeout: float = 240.0, poll: float = 5.0) -> list[float] | None:
    """Wait (up to ``timeout`` s) until the 1-min load falls below ``cores``, so that one back end's
    run does not start in the previous one's wake (the 1-min load average decays over minutes);
    returns the load average it starts at (None where it cannot be read)."""
    deadline = time.monotonic() + timeout
    load = load_average()
    while load and load[0] >= cores and time.monotonic() < deadline:
        time.sleep(poll)
        load = load_average()
    return load


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="sfload") as tmp:
        for profile in args.profiles:
            load_at_start = settle(usable_cores())  # before this back end's stack: what else was running
            stack = _start(profile, Path(tmp))
            try:
                res = run_load(stack, args.runs, args.pool_limit or None, args.timeout)
                res["problems"] = check_exactly_once(res)
                res["load_average_at_start"] = load_at_start
                if res["problems"]:  # keep the evidence: the services' logs
                    kept = args.json.parent / f"load-logs-{profile}"
                    shutil.rmtree(kept, ignore_errors=True)
                    shutil.copytree(stack.run_dir / "logs", kept)
                    res["logs_kept"] = str(kept)
            finally:
                stack.stop()
            print(f"{profile}: {res['wall_s']:.1f} s for {args.runs} runs, problems: {res['problems'] or 'none'}")
            results.append(res)
    write_json(results, args.json)
    text = report(results, args)
    print(text)
    if args.results is not None:
        old = args.results.read_text() if args.results.is_file() else ""
        args.results.write_text(replace_section(old, SECTION, text))
        print(f"updated the load section of {args.results}")
    return 0 if not any(r["problems"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
