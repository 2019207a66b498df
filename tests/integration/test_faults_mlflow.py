"""Fault: the MLflow server is restarted in the middle of a run. `skinflow retrain` logs to a real
`mlflow server` process; once the first epoch's metrics are in, the server is stopped, and started
again on the same port and store a few seconds later. MLflow's client retries the queued per-epoch
writes, so every epoch's metrics arrive; the run ends FINISHED and exactly one model version is
registered, whole (its alias and the gate's tags set): nothing half-registered is left."""

from __future__ import annotations

import json
import subprocess
import time
import uuid

import pytest
from mlflow import MlflowClient

from tests.faultkit import MlflowServer, retrain_command

pytestmark = pytest.mark.slow

EPOCHS = 6


def _first_epoch_logged(client: MlflowClient, deadline: float) -> str | None:
    """The retrain run's id once its epoch-1 val_loss is stored (None when none shows in time)."""
    while time.monotonic() < deadline:
        exp = client.get_experiment_by_name("skinflow-retrain")
        if exp is not None:
            for run in client.search_runs([exp.experiment_id]):
                if any(m.step == 1 for m in client.get_metric_history(run.info.run_id, "val_loss")):
                    return run.info.run_id
        time.sleep(0.2)
    return None


def test_mlflow_server_restarted_mid_run(prefect_harness, synth_small, tmp_path) -> None:
    from prefect.settings import PREFECT_API_URL

    server = MlflowServer(tmp_path / "mlflow").start()
    proc = None
    try:
        model = f"restart-{uuid.uuid4().hex[:6]}"
        cmd, env = retrain_command(synth_small, tmp_path, server.url, PREFECT_API_URL.value(), model, EPOCHS)
        cmd += ["--out", str(tmp_path / "out")]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        client = MlflowClient(server.url)
        run_id = _first_epoch_logged(client, time.monotonic() + 900)
        assert run_id is not None and proc.poll() is None, "the run was still training when the server stopped"
        server.stop()
        stopped = time.monotonic()
        time.sleep(3)
        server.start()
        down_s = time.monotonic() - stopped
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        summary = json.loads(out[out.index("{"):])

        assert summary["run_id"] == run_id
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        for name in ("train_loss", "val_loss", "val_balanced_accuracy"):
            steps = sorted(m.step for m in client.get_metric_history(run_id, name))
            assert steps == list(range(1, EPOCHS + 1)), (name, steps, f"server down {down_s:.0f} s")
        versions = client.search_model_versions(f"name='{model}'")
        assert [v.version for v in versions] == [summary["model_version"]] == ["1"], "one version, no duplicate"
        version = versions[0]
        assert version.run_id == run_id and version.status == "READY"
        assert version.tags["gate_decision"] == "promoted"  # no champion before: the gate promoted it
        assert set(client.get_registered_model(model).aliases) == {"challenger", "champion"}
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        server.stop()
