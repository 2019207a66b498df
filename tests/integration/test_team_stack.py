"""`infra/stack.sh up --db postgres`: the team topology on one machine (PostgreSQL for MLflow and
Prefect, moto S3, a two-node Ray cluster, two Prefect workers), checked through the services
themselves, with no secret in what the script prints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from infra.local_stack import api_auth
from tests.conftest import REPO

pytestmark = pytest.mark.slow
PG_TABLES = "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"


def _psql(stack, db: str, sql: str) -> str:
    pg_bin = sorted(Path("/usr/lib/postgresql").glob("*/bin/psql"))[-1]
    env = {"PGPASSWORD": (stack.run_dir / "secrets" / "pg_password").read_text().strip(), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [
            str(pg_bin),
            "-X",
            "-At",
            "-h",
            "127.0.0.1",
            "-p",
            str(stack.ports["PG"]),
            "-U",
            "skinflow",
            "-d",
            db,
            "-c",
            sql,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def test_every_service_runs_and_status_says_so(team_stack) -> None:
    status = team_stack.sh("status")
    assert status.returncode == 0, status.stdout
    assert status.stdout.count(" running ") == 8 == len(team_stack.services)
    assert all(team_stack.pids().values()), team_stack.pids()
    assert f"postgres listening 127.0.0.1:{team_stack.ports['PG']}" in status.stdout


def test_mlflow_and_prefect_keep_their_metadata_in_postgres(team_stack) -> None:
    topo = team_stack.describe()
    pg = f"skinflow@127.0.0.1:{team_stack.ports['PG']}"
    assert topo["mlflow_backend_store_uri"] == f"postgresql+psycopg2://{pg}/mlflow"
    assert topo["prefect_database_url"] == f"postgresql+asyncpg://{pg}/prefect"
    # what the running MLflow server was started with is what describe reports
    mlflow_args = _cmdline(team_stack.pid("mlflow"))
    assert mlflow_args[mlflow_args.index("--backend-store-uri") + 1] == topo["mlflow_backend_store_uri"]
    assert mlflow_args[mlflow_args.index("--artifacts-destination") + 1] == "s3://skinflow/mlartifacts"
    # both schemas were created in Postgres by the servers, and Prefect wrote no sqlite file
    assert int(_psql(team_stack, "mlflow", PG_TABLES)) > 10
    assert int(_psql(team_stack, "prefect", PG_TABLES)) > 10
    assert "skinflow-pool" in _psql(team_stack, "prefect", "SELECT name FROM work_pool")
    assert not list((team_stack.run_dir / "prefect").glob("*.db"))
    # an experiment created through the MLflow server lands in Postgres
    from mlflow import MlflowClient

    exp = MlflowClient(team_stack.env["MLFLOW_TRACKING_URI"]).create_experiment("team-stack-probe")
    assert (
        _psql(team_stack, "mlflow", f"SELECT name FROM experiments WHERE experiment_id = {int(exp)}")
        == "team-stack-probe"
    )


def test_two_workers_are_online_on_the_pool(team_stack) -> None:
    import httpx

    api = team_stack.env["PREFECT_API_URL"]
    auth = api_auth(team_stack.env)
    workers = httpx.post(f"{api}/work_pools/skinflow-pool/workers/filter", json={}, auth=auth, timeout=10).json()
    online = sorted(w["name"] for w in workers if w["status"] == "ONLINE")
    assert online == ["skinflow-pool-worker-1", "skinflow-pool-worker-2"]
    # each worker sends its flow runs to this stack's MLflow, S3 and Ray cluster
    for service in ("worker", "worker2"):
        env = dict(
            kv.split("=", 1)
            for kv in Path(f"/proc/{team_stack.pid(service)}/environ").read_bytes().decode().split("\0")
            if "=" in kv
        )
        assert env["MLFLOW_TRACKING_URI"] == team_stack.env["MLFLOW_TRACKING_URI"]
        assert env["RAY_ADDRESS"] == f"127.0.0.1:{team_stack.ports['RAY']}"
        assert "PGPASSWORD" not in env  # only the database's clients (MLflow, Prefect servers) get it


def test_the_prefect_api_refuses_a_client_without_the_stack_s_auth_string(team_stack) -> None:
    """The team profile turns on Prefect's basic auth: no string or a wrong one is 401; the env
    file's string is let in; the health probe stays open (for supervisors and load balancers)."""
    import httpx

    api, auth = team_stack.env["PREFECT_API_URL"], api_auth(team_stack.env)
    assert auth is not None and auth[0] == "skinflow" and len(auth[1]) >= 32
    assert httpx.post(f"{api}/flows/filter", json={}, timeout=10).status_code == 401
    assert httpx.post(f"{api}/flows/filter", json={}, auth=(auth[0], "wrong"), timeout=10).status_code == 401
    assert httpx.post(f"{api}/flows/filter", json={}, auth=auth, timeout=10).status_code == 200
    assert httpx.get(f"{api}/health", timeout=10).status_code == 200
    server_env = Path(f"/proc/{team_stack.pid('prefect')}/environ").read_bytes().split(b"\0")
    assert f"PREFECT_SERVER_API_AUTH_STRING={auth[0]}:{auth[1]}".encode() in server_env
    assert team_stack.describe()["prefect_api_auth"] == "basic"


_RAY_PROBE = """
import json, ray
ray.init(log_to_driver=False)
nodes = [n for n in ray.nodes() if n["Alive"]]
@ray.remote(resources={"worker_node": 0.01}, num_cpus=0)
def where():
    return ray.get_runtime_context().get_node_id()
print(json.dumps({"nodes": [{"id": n["NodeID"], "ip": n["NodeManagerAddress"], "res": sorted(n["Resources"])}
                            for n in nodes], "ran_on": ray.get(where.remote())}))
ray.shutdown()
"""


def test_ray_has_a_head_and_a_second_node_that_runs_tasks(team_stack, tmp_path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _RAY_PROBE],
        env=team_stack.client_env(PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(seen["nodes"]) == 2 and {n["ip"] for n in seen["nodes"]} == {"127.0.0.1"}
    (second,) = [n["id"] for n in seen["nodes"] if "worker_node" in n["res"]]
    assert seen["ran_on"] == second


def test_a_ray_client_with_a_wrong_token_is_refused(team_stack, tmp_path) -> None:
    code = "import ray; ray.init(log_to_driver=False); print('joined')"
    env = team_stack.client_env(RAY_AUTH_TOKEN="0" * 48, HOME=str(tmp_path))
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert out.returncode != 0 and "joined" not in out.stdout
    assert "token" in out.stderr.lower() or "auth" in out.stderr.lower(), out.stderr[-2000:]


def test_no_secret_is_printed_and_the_env_file_is_private(team_stack) -> None:
    secrets = [
        (team_stack.run_dir / "secrets" / name).read_text().strip()
        for name in ("pg_password", "ray_token", "prefect_password")
    ]
    assert all(len(s) >= 32 for s in secrets)
    shown = (
        team_stack.up.stdout + team_stack.up.stderr + team_stack.sh("status").stdout + team_stack.sh("describe").stdout
    )
    for log in (team_stack.run_dir / "logs").glob("*.log"):
        shown += log.read_text(errors="replace")
    assert not [s for s in secrets if s in shown]
    assert (team_stack.run_dir / "env").stat().st_mode & 0o077 == 0
    assert (team_stack.run_dir / "secrets").stat().st_mode & 0o077 == 0
    # the database URLs anywhere in the processes' arguments carry no password
    for service in ("mlflow", "prefect"):
        assert not [s for s in secrets if s in " ".join(_cmdline(team_stack.pid(service)))]


def test_a_killed_worker_is_restarted_alone_and_keeps_its_log(team_stack) -> None:
    import os
    import signal
    import time

    others = {s: p for s, p in team_stack.pids().items() if s != "worker2"}
    log_file = team_stack.run_dir / "logs" / "worker2.log"
    starts = log_file.read_text().count("Worker 'skinflow-pool-worker-2' started!")  # other fault tests restart it too
    os.killpg(team_stack.pid("worker2"), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while team_stack.pid("worker2") is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert team_stack.pid("worker2") is None
    assert team_stack.sh("status").returncode == 1  # partial
    team_stack.restart("worker2")
    assert log_file.read_text().count("Worker 'skinflow-pool-worker-2' started!") == starts + 1  # appended, kept
    assert team_stack.sh("status").returncode == 0
    assert {s: p for s, p in team_stack.pids().items() if s != "worker2"} == others  # nothing else restarted


def test_a_sweep_submitted_with_ray_job_submit_runs_on_both_nodes_and_logs_to_the_stack_s_mlflow(
    team_stack, synth_small, tmp_path
) -> None:
    """The README's way to run a sweep on a team's cluster (infra/README.md, "Ray cluster"): `ray job
    submit` to the head's Jobs API (the env file's RAY_API_SERVER_ADDRESS, dashboard on 127.0.0.1
    only), MLflow named in the job's runtime env. The driver runs on the head and joins the cluster
    (Ray sets RAY_ADDRESS); its two trials (1 CPU each, 1 CPU per node) run on both nodes and log to
    the stack's MLflow; the flow run is on the stack's Prefect server."""
    import time

    import httpx
    import psutil
    import ray  # noqa: F401 - as the other tests: Ray's packaged psutil when none is installed
    from mlflow import MlflowClient

    from tests.conftest import VENV_BIN

    env = team_stack.client_env(HOME=str(tmp_path))
    dashboard = int(env["RAY_API_SERVER_ADDRESS"].rsplit(":", 1)[1])
    assert dashboard == team_stack.ports["RAY_DASHBOARD"]
    bound = {c.laddr.ip for c in psutil.net_connections("inet") if c.status == "LISTEN" and c.laddr.port == dashboard}
    assert bound == {"127.0.0.1"}, bound
    runtime = {
        "env_vars": {
            "MLFLOW_TRACKING_URI": env["MLFLOW_TRACKING_URI"],
            "SKINFLOW_DATA_ROOT": str(tmp_path / "data"),
            "PREFECT_HOME": str(tmp_path / "prefect"),
        }
    }
    sweep = [str(VENV_BIN / "skinflow"), "tune", "--data", str(synth_small), "--size", "32", "--model", "resnet18"]
    sweep += ["--schedules", "sgd,sgdr", "--amp", "off", "--epochs", "1", "--batch-size", "16", "--name", "ray-job"]
    submit = [str(VENV_BIN / "ray"), "job", "submit", "--submission-id", "sweep-1"]
    started_ms = int(time.time() * 1000)
    out = subprocess.run(
        [*submit, "--runtime-env-json", json.dumps(runtime), "--", *sweep],
        env=env,
        capture_output=True,
        text=True,
        timeout=480,
        cwd=tmp_path,
    )
    said = out.stdout + out.stderr
    assert out.returncode == 0 and "Job 'sweep-1' succeeded" in said, said[-4000:]
    status = subprocess.run(
        [str(VENV_BIN / "ray"), "job", "status", "sweep-1"], env=env, capture_output=True, text=True, timeout=60
    )
    assert status.returncode == 0 and "Job 'sweep-1' succeeded" in status.stdout, status.stdout + status.stderr

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("skinflow-tune")
    trials = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("trial")]
    trials = [r for r in trials if r.info.start_time >= started_ms]  # this sweep's (other tests share the stack)
    assert len(trials) == 2 and all(r.info.status == "FINISHED" for r in trials), [r.info for r in trials]
    assert len({r.data.tags["ray_node_id"] for r in trials}) == 2, "one trial on each node"
    runs = httpx.post(
        f"{env['PREFECT_API_URL']}/flow_runs/filter",
        json={"flows": {"name": {"any_": ["tune"]}}},
        auth=api_auth(env),
        timeout=10,
    ).json()
    assert any(r["state_type"] == "COMPLETED" for r in runs), [r["state_type"] for r in runs]
