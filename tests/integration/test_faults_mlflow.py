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
        summary = json.loads(out[out.index("{") :])

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


def test_a_version_whose_create_answer_was_lost_is_registered_once(tmp_path) -> None:
    """The server commits a model version but its answer never arrives (the proxy forwards the
    create, then answers 503): MLflow's client sends the create again, and a second version of the
    same logged model appears. register_version leaves exactly one, the first, and says which."""
    import mlflow
    import numpy as np

    from ml.tracking import models as tracked_models
    from ml.tracking import registry
    from tests.faultkit import FaultProxy
    from tests.integration.test_tracking import CLASSES, _tiny_model

    server = MlflowServer(tmp_path / "mlflow").start()
    proxy = FaultProxy(server.url, tmp_path, fail_path="/api/2.0/mlflow/model-versions/create", forward_first=True)
    try:
        mlflow.set_tracking_uri(proxy.url)
        with mlflow.start_run() as run:
            info = tracked_models.log_torch_model(
                _tiny_model(0), "tiny", CLASSES, np.zeros((1, 3, 16, 16), np.float32), serialization_format="pickle"
            )
        name = f"lost-answer-{uuid.uuid4().hex[:6]}"
        try:
            version = registry.register_version(info.model_uri, name)
        except Exception:  # the client gave up on the 503: the task's retry calls it again
            version = registry.register_version(info.model_uri, name)
        creates = [r for r in proxy.requests() if r["path"] == "/api/2.0/mlflow/model-versions/create"]
        assert creates and creates[0]["failed"], "the fault happened: the first create's answer was lost"
        client = MlflowClient(server.url)
        versions = client.search_model_versions(f"name = '{name}'")
        assert [v.version for v in versions] == [version] == ["1"], [(v.version, v.source) for v in versions]
        assert versions[0].run_id == run.info.run_id
        assert registry.register_version(info.model_uri, name) == "1"  # again: the same version, no new one
        assert len(client.search_model_versions(f"name = '{name}'")) == 1
    finally:
        proxy.close()
        server.stop()
