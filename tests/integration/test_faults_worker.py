"""Fault: a Prefect worker is killed while it runs a flow (issue #16, fault 3).

On the team stack (two process workers on one pool, Prefect on PostgreSQL), `train/on-demand`
runs a checkpointed training. Once two epochs are checkpointed, the worker that took the run is
SIGKILLed together with the flow run's process (the host dies: nothing is left to report a
state). Then:

- the flow run does not stay Running: its heartbeats stop and the stack's
  ``crash-zombie-flow-runs`` automation (infra/automations/) marks it Crashed;
- the surviving worker takes the next scheduled run and completes it;
- ``prefect flow-run retry`` of the crashed run completes it from its checkpoint: the new MLflow
  run is tagged ``resumed_from_run`` (the killed run, now KILLED and tagged ``superseded_by``)
  and holds every epoch once.

The killed worker is started again at the end, so the session's stack is whole for later tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient

from infra.local_stack import api_auth
from tests.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
PREFECT = str(Path(sys.executable).parent / "prefect")
EPOCHS = 8
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _flow_run(api: httpx.Client, run_id: str) -> dict:
    r = api.get(f"/flow_runs/{run_id}")
    r.raise_for_status()
    return r.json()


def _create_run(api: httpx.Client, parameters: dict) -> str:
    dep = api.get("/deployments/name/train/on-demand")
    dep.raise_for_status()
    r = api.post(f"/deployments/{dep.json()['id']}/create_flow_run", json={"parameters": parameters})
    r.raise_for_status()
    return r.json()["id"]


def _wait_state(api: httpx.Client, run_id: str, wanted: set[str], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = _flow_run(api, run_id)
        if run["state_type"] in wanted:
            return run
        if run["state_type"] in TERMINAL:
            break
        time.sleep(1)
    raise AssertionError(
        f"flow run {run_id} is {run['state_type']} ({run['state']['message']!r}), "
        f"not one of {sorted(wanted)} after {timeout:.0f} s"
    )


def _flow_run_processes(run_id: str) -> list[int]:
    """Pids whose environment names this flow run (the process the worker started for it)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if f"PREFECT__FLOW_RUN_ID={run_id}".encode() in environ.split(b"\0"):
            found.append(int(proc.name))
    return found


def _ancestors(pid: int) -> list[int]:
    chain = []
    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
        chain.append(pid)
    return chain


def _params(data: Path, ckpt: Path | None, out: Path, epochs: int) -> dict:
    training = {
        "arch": "resnet18",
        "schedule": "sgdr",
        "lr": 0.01,
        "epochs": epochs,
        "batch_size": 16,
        "seed": 0,
        "progress": False,
    }
    if ckpt is not None:
        training["checkpoint_dir"] = str(ckpt)
    return {"data": {"source": str(data), "size": 32}, "training": training, "out_dir": str(out)}


def test_a_killed_worker_s_flow_run_is_crashed_taken_over_and_resumed(team_stack, tmp_path) -> None:
    from ml.data.synth import SynthConfig, generate
    from ml.train.checkpoint import load_verified

    env = team_stack.client_env()
    api = httpx.Client(base_url=env["PREFECT_API_URL"], auth=api_auth(env), timeout=30)  # the team stack's basic auth
    deploy = subprocess.run(
        [PREFECT, "--no-prompt", "deploy", "--all"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
    again = subprocess.run(
        [sys.executable, str(REPO / "infra" / "apply_automations.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )  # stack.sh up applied it once already
    assert again.returncode == 0, again.stderr[-2000:]
    automations = api.post("/automations/filter", json={}).json()
    assert [a["name"] for a in automations].count("crash-zombie-flow-runs") == 1  # replaced, not doubled
    worker_env = Path(f"/proc/{team_stack.pid('worker')}/environ").read_bytes().split(b"\0")
    assert b"PREFECT_FLOWS_HEARTBEAT_FREQUENCY=30" in worker_env

    data = tmp_path / "synth"
    generate(data, SynthConfig(per_class=8, size=32, seed=0), progress=False)
    ckpt = tmp_path / "ckpt"
    victim = _create_run(api, _params(data, ckpt, tmp_path / "out-victim", EPOCHS))

    # wait for two checkpointed epochs, then kill the worker running it and the run's process
    sidecar, digests = ckpt / "last.pt.sha256", []
    deadline = time.monotonic() + 420
    while len(digests) < 2 and time.monotonic() < deadline:
        if sidecar.is_file() and (d := sidecar.read_text().strip()) and d not in digests:
            digests.append(d)
        state = _flow_run(api, victim)["state_type"]
        assert state not in TERMINAL, f"the run ended ({state}) before its second checkpoint"
        time.sleep(0.05)
    assert len(digests) == 2, "no second checkpoint in time"
    procs = _flow_run_processes(victim)
    assert procs, "the flow run's process was not found"
    workers = {team_stack.pid(s): s for s in ("worker", "worker2")}
    owners = {workers[p] for pid in procs for p in _ancestors(pid) if p in workers}
    assert len(owners) == 1, (procs, workers)
    (killed,) = owners
    survivor = "worker2" if killed == "worker" else "worker"
    banner = f"Worker 'skinflow-pool-worker-{1 if killed == 'worker' else 2}' started!"
    killed_log = team_stack.run_dir / "logs" / f"{killed}.log"
    starts = killed_log.read_text(errors="replace").count(banner)
    groups = {team_stack.pid(killed), *(os.getpgid(p) for p in procs)}
    for group in groups:
        os.killpg(group, signal.SIGKILL)
    try:
        deadline = time.monotonic() + 10
        while (team_stack.pid(killed) or _flow_run_processes(victim)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert team_stack.pid(killed) is None and not _flow_run_processes(victim)
        killed_at = load_verified(ckpt / "last.pt")["epoch"]
        assert 2 <= killed_at < EPOCHS, killed_at
        first = json.loads((ckpt / "mlflow_run.json").read_text())["run_id"]  # the killed run's MLflow run
        assert _flow_run(api, victim)["state_type"] == "RUNNING"  # nobody is left to say otherwise

        # the surviving worker takes the next run
        nxt = _create_run(api, _params(data, None, tmp_path / "out-next", 1))
        assert _wait_state(api, nxt, {"COMPLETED"}, 420)["state_type"] == "COMPLETED"
        survivor_log = (team_stack.run_dir / "logs" / f"{survivor}.log").read_text(errors="replace")
        assert nxt in survivor_log, f"{survivor} did not run {nxt}"

        # the killed run is marked Crashed by the heartbeat automation, not left Running
        crashed = _wait_state(api, victim, {"CRASHED"}, 300)
        assert "heartbeat" in crashed["state"]["message"]

        # retrying it resumes from its checkpoint and completes
        retry = subprocess.run(
            [PREFECT, "flow-run", "retry", victim], env=env, capture_output=True, text=True, timeout=120
        )
        assert retry.returncode == 0, retry.stdout[-2000:] + retry.stderr[-2000:]
        done = _wait_state(api, victim, {"COMPLETED"}, 600)
        assert done["run_count"] >= 2
    finally:
        team_stack.restart(killed)

    assert killed_log.read_text(errors="replace").count(banner) == starts + 1  # the stack is whole again
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"], registry_uri=env["MLFLOW_TRACKING_URI"])
    resumed = client.search_runs(
        [client.get_experiment_by_name("skinflow-train").experiment_id], f"tags.resumed_from_run = '{first}'"
    )
    assert len(resumed) == 1, "one MLflow run continues the killed one"
    old, new = client.get_run(first), resumed[0]
    assert old.info.status == "KILLED" and old.data.tags["superseded_by"] == new.info.run_id
    assert new.info.status == "FINISHED"
    assert new.data.tags["restored_from_epoch"] == str(killed_at)  # the retry resumed from the checkpoint
    assert json.loads((ckpt / "mlflow_run.json").read_text())["run_id"] == new.info.run_id
    steps = sorted(m.step for m in client.get_metric_history(new.info.run_id, "val_loss"))
    assert steps == sorted(set(steps)) and len(steps) == EPOCHS, steps  # every epoch once, restored ones included
    assert load_verified(ckpt / "last.pt")["epoch"] == EPOCHS
