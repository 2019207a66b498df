"""End to end on the team stack (`infra/stack.sh up --db postgres`: MLflow and Prefect on
PostgreSQL, moto S3, a two-node Ray cluster, two process workers): `prefect deploy --all`,
`prefect deployment run 'retrain/on-demand' --watch`, and the run, metrics, model version and
alias as the MLflow server reports them.

It runs on the postgres profile only. Measured with both (2026-12-02, 2 cores shared, load ~16):
deploy + stack start 112 s vs 93 s, the retrain run 104 s vs 95 s (postgres vs sqlite), ~10%
slower; the sqlite listing and run alone took 107 s more (plus its deploy). The sqlite profile
differs only in the two servers' store URIs, and tests/integration/test_stack_scripts.py keeps
bringing it up and checking it (health, env file, artifacts in S3). To run this file on the sqlite stack as well:
`SKINFLOW_E2E_PROFILES=sqlite,postgres`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from mlflow import MlflowClient

from tests.conftest import REPO, read_stack_env

# its stacks come through request.getfixturevalue, which collection cannot see: the group is named
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.xdist_group("stacks")]
PREFECT = str(Path(sys.executable).parent / "prefect")


PROFILES = os.environ.get("SKINFLOW_E2E_PROFILES", "postgres").split(",")


@pytest.fixture(scope="module", params=PROFILES)
def deployed(request):
    if request.param == "sqlite":
        run_dir = request.getfixturevalue("local_stack")[0]
    else:
        run_dir = request.getfixturevalue("team_stack").run_dir
    env = {**os.environ, **read_stack_env(run_dir / "env"), "PREFECT_HOME": str(run_dir / "cli-home"), "PWD": str(REPO)}
    out = subprocess.run(
        [PREFECT, "--no-prompt", "deploy", "--all"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return env


def test_every_deployment_is_registered_and_nightly_is_scheduled(deployed):
    out = subprocess.run([PREFECT, "deployment", "ls"], env=deployed, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    listing = out.stdout.replace("\n", " ")
    for name in (
        "retrain/nightly",
        "retrain/on-demand",
        "validate/on-demand",
        "train/on-demand",
        "tune/on-demand",
        "robustness/on-demand",
        "interpret/on-demand",
        "monitor/daily",
        "monitor/on-demand",
        "predict/on-demand",
        "label-issues/on-demand",
    ):
        assert name in listing, f"{name} missing from: {out.stdout}"
    inspect = subprocess.run(
        [PREFECT, "deployment", "inspect", "retrain/nightly"], env=deployed, capture_output=True, text=True, timeout=120
    )
    assert "0 2 * * *" in inspect.stdout


def test_deployment_run_lands_in_the_mlflow_server(deployed, tmp_path):
    from ml.data.synth import SynthConfig, generate

    data = tmp_path / "synth"
    generate(data, SynthConfig(per_class=10, size=40, seed=3), progress=False)
    policy = tmp_path / "promotion.yaml"  # tiny data: no recall floor, so the first version is promoted
    policy.write_text(
        "margin: 0.03\nrecall_floor: 0.0\nalpha: 0.05\nn_boot: 500\nci: 0.95\nseed: 0\nmin_disjoint_heldout: 5\nsuperiority_level: 0.95\nmin_improvement: 0.0\nmax_ece: null\nrecall_floor_confidence: 0.95\nmax_group_loss: null\nmin_group_support: 30\n"
    )  # the tiny test split has ~20 images
    params = {
        "data": {"source": str(data), "size": 32},
        "training": {"epochs": 1, "batch_size": 16},
        "validate_data": False,
        "policy": str(policy),
        "out_dir": str(tmp_path / "out"),
    }
    cmd = [
        PREFECT,
        "deployment",
        "run",
        "retrain/on-demand",
        "--params",
        json.dumps(params),
        "--watch",
        "--watch-timeout",
        "420",
    ]
    run = subprocess.run(cmd, env=deployed, capture_output=True, text=True, timeout=480)
    assert run.returncode == 0 and "Completed" in run.stdout, run.stdout[-4000:] + run.stderr[-2000:]

    client = MlflowClient(tracking_uri=deployed["MLFLOW_TRACKING_URI"], registry_uri=deployed["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("skinflow-retrain")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])
    assert runs and runs[0].info.status == "FINISHED"
    metrics = runs[0].data.metrics
    assert 0.0 <= metrics["test_macro_f1"] <= 1.0 and "val_loss" in metrics
    version = client.get_model_version("skin-lesion-classifier", "1")
    assert version.run_id == runs[0].info.run_id
    assert version.tags["dataset_version"] == runs[0].data.tags["dataset_version"]
    assert client.get_model_version_by_alias("skin-lesion-classifier", "champion").version == "1"
    # the model's weights went to the stack's S3 bucket through the MLflow server
    s3 = boto3.client(
        "s3",
        endpoint_url=deployed["SKINFLOW_S3_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id=deployed["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=deployed["AWS_SECRET_ACCESS_KEY"],
    )
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=deployed["SKINFLOW_S3_BUCKET"])["Contents"]]
    assert any(k.endswith("state_dict.pt") for k in keys)
