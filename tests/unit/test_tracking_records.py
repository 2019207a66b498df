"""ml.tracking.runs against a throwaway sqlite store: a training run's system metrics (sampled by
MLflow through a helper thread's active run, the caller's thread untouched) and evaluation
metrics linked to a logged model and to the evaluated split."""

from __future__ import annotations

import threading
import time

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from ml.tracking import runs as tracking_runs
from tests.conftest import mlflow_env, restore_mlflow

INTERVAL_S = 0.4
CPU = "system/cpu_utilization_percentage"


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, monkeypatch_module):
    """A fresh store and experiment for the module; the tracking URI and MLflow's system-metrics
    variables are restored afterwards."""
    root = tmp_path_factory.mktemp("records")
    saved = mlflow_env()
    for name in ("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"):
        monkeypatch_module.setenv(name, "")  # recorded, so that what the code under test sets is undone
        monkeypatch_module.delenv(name)
    tracking_runs.configure_mlflow(f"sqlite:///{root / 'mlflow.db'}")
    yield tracking_runs.ensure_experiment("records", artifact_location=(root / "artifacts").as_uri()).experiment_id
    restore_mlflow(saved)  # not set_*_uri(previous): those would pin the registry for later modules


def _system_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("system-metrics-")}


def test_a_training_run_samples_system_metrics_while_it_runs(experiment) -> None:
    run_id = tracking_runs.create_run(experiment, "sgd lr=0.01 fp32 s0 [train]")
    with tracking_runs.system_metrics(run_id, interval_s=INTERVAL_S):
        assert mlflow.active_run() is None, "the caller's thread has no active run"
        time.sleep(2.5 * INTERVAL_S)
        # what logging the model does at the end of training, in the caller's thread (its end_run
        # also stops MLflow's monitor of the run)
        with mlflow.start_run(run_id=run_id):
            pass
    tracking_runs.terminate_run(run_id)
    run = MlflowClient().get_run(run_id)
    names = {k for k in run.data.metrics if k.startswith("system/")}
    assert {CPU, "system/system_memory_usage_megabytes", "system/disk_usage_percentage"} <= names, names
    assert 0.0 <= run.data.metrics[CPU] <= 100.0
    assert run.info.status == "FINISHED" and mlflow.active_run() is None and not _system_threads()


def test_system_metrics_samples_and_ends_a_failed_block(experiment) -> None:
    run_id = tracking_runs.create_run(experiment, "fails")
    with pytest.raises(RuntimeError, match="boom"):
        with tracking_runs.system_metrics(run_id, interval_s=INTERVAL_S):
            time.sleep(2.5 * INTERVAL_S)
            raise RuntimeError("boom")
    run = MlflowClient().get_run(run_id)
    assert CPU in run.data.metrics and run.info.status == "FAILED" and not _system_threads()


def test_mlflows_switch_turns_them_off(experiment, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
    run_id = tracking_runs.create_run(experiment, "off")
    with tracking_runs.system_metrics(run_id, interval_s=INTERVAL_S):
        assert not _system_threads()
        time.sleep(2.5 * INTERVAL_S)
    assert not any(k.startswith("system/") for k in MlflowClient().get_run(run_id).data.metrics)


def test_evaluation_metrics_are_linked_to_the_model_and_the_evaluated_split(experiment) -> None:
    records = pd.DataFrame({"path": ["a.jpg", "b.jpg", "c.jpg"], "label": ["acne", "nevus", "acne"]})
    records["split"] = ["train", "test", "test"]
    digest = "d" * 64
    run_id = tracking_runs.create_run(experiment, "linked")
    with mlflow.start_run(run_id=run_id):
        tracking_runs.log_dataset_input("f" * 64, "dataset", "/data/synth", records)
        model = mlflow.initialize_logged_model(name="model", source_run_id=run_id)
        test = records[records["split"] == "test"]
        dataset = tracking_runs.log_evaluation_dataset("test", digest, "/data/synth", test, "f" * 64)
        tracking_runs.log_evaluation_metrics({"test_balanced_accuracy": 0.5}, model.model_id, dataset)
    linked = mlflow.get_logged_model(model.model_id).metrics
    assert [(m.key, m.value, m.dataset_name, m.dataset_digest) for m in linked] == [
        ("test_balanced_accuracy", 0.5, "dataset-test", digest[:36])
    ]
    run = MlflowClient().get_run(run_id)
    assert run.data.metrics["test_balanced_accuracy"] == 0.5
    inputs = {i.dataset.name: {t.key: t.value for t in i.tags} for i in run.inputs.dataset_inputs}
    assert inputs["dataset"]["mlflow.data.context"] == "training"
    assert inputs["dataset-test"]["mlflow.data.context"] == "testing"
    assert inputs["dataset-test"]["split"] == "test" and inputs["dataset-test"]["dataset_version"] == "f" * 64
