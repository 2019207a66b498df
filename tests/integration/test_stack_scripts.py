"""infra/stack.sh: the real local stack comes up healthy on free ports, refuses a second
start, serves MLflow artifacts from S3, and leaves nothing behind after ``down``."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request

import pytest

from tests.conftest import read_stack_env as _read_env

pytestmark = pytest.mark.slow


@pytest.fixture()
def stack(local_stack):
    return local_stack


def test_stack_up_is_healthy_and_writes_env(stack) -> None:
    run_dir, ports, sh, up = stack
    assert f"http://127.0.0.1:{ports['MLFLOW']}" in up.stdout
    env = _read_env(run_dir / "env")
    assert env["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{ports['MLFLOW']}"
    assert env["PREFECT_API_URL"] == f"http://127.0.0.1:{ports['PREFECT']}/api"
    assert env["SKINFLOW_S3_ENDPOINT_URL"] == env["MLFLOW_S3_ENDPOINT_URL"] == f"http://127.0.0.1:{ports['S3']}"
    for url in (f"{env['MLFLOW_TRACKING_URI']}/health", f"{env['PREFECT_API_URL']}/health"):
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.status == 200
    status = sh("status")
    assert status.returncode == 0 and status.stdout.count("running") == 4


def test_second_up_is_refused_and_leaves_the_stack_running(stack) -> None:
    _, _, sh, _ = stack
    again = sh("up")
    assert again.returncode != 0 and "already running" in again.stderr
    assert sh("status").returncode == 0


def test_mlflow_artifacts_land_in_the_s3_bucket(stack) -> None:
    run_dir, _, _, _ = stack
    code = (
        "import os, boto3, mlflow\n"
        "with mlflow.start_run():\n"
        "    mlflow.log_dict({'ok': 1}, 'reports/probe.json')\n"
        "s3 = boto3.client('s3', endpoint_url=os.environ['SKINFLOW_S3_ENDPOINT_URL'])\n"
        "keys = [o['Key'] for o in s3.list_objects_v2(Bucket=os.environ['SKINFLOW_S3_BUCKET'])['Contents']]\n"
        "print(*keys)\n"
    )
    env = {**os.environ, **_read_env(run_dir / "env")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    keys = out.stdout.strip().splitlines()[-1].split()  # MLflow prints run links before it
    probes = [k for k in keys if k.endswith("/artifacts/reports/probe.json")]
    assert probes and all(k.startswith("mlartifacts/") for k in probes)
