"""Ray Tune trial child runs as the MLflow UI lists them: a name per trial that tells them apart
and the dataset they trained on (real local Ray, sqlite store, tiny synthetic set)."""

from __future__ import annotations

import logging

import pytest
from mlflow import MlflowClient

from ml.settings import get_settings
from tests.conftest import use_local_stores

pytestmark = pytest.mark.slow


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_trials_are_named_and_log_their_dataset(synth_small, ray_local, tmp_path, monkeypatch):
    from ml.data.cache import build_cache
    from ml.data.manifest import build_manifest
    from ml.data.split import split_manifest
    from ml.tracking.runs import absolute_tracking_uri
    from ml.train.sweep import TrialData
    from tasks.mlflow_tasks import open_run
    from tasks.tuning import run_tune

    use_local_stores(monkeypatch, tmp_path)
    heard = _Lines()  # the task's log (Prefect's logging setup may replace the root's handlers)
    task_log = logging.getLogger("skinflow")  # tasks.common.run_logger outside a flow run
    task_log.addHandler(heard)
    level = task_log.level
    task_log.setLevel(logging.INFO)
    try:
        cache = build_cache(
            split_manifest(build_manifest(synth_small), val_frac=0.25, seed=0, max_distance=None),
            32,
            tmp_path / "cache",
        )
        parent, experiment_id = open_run.fn("skinflow-tune", "tune test")
        res = run_tune.fn(
            TrialData.from_cache(cache),
            (1e-3, 1e-2),
            {"batch_size": 16, "snapshots": 0},
            ["sgd", "sgdr"],
            [False],
            ["resnet18"],
            1,
            1,
            parent,
            experiment_id,
            absolute_tracking_uri(get_settings().mlflow_tracking_uri),
            name="t-names",
        )
    finally:
        task_log.removeHandler(heard)
        task_log.setLevel(level)
        get_settings.cache_clear()
    assert not res["failed"]
    assert [t["outcome"] for t in res["trials"]] == ["completed", "completed"]
    progress = [line for line in heard.lines if line.startswith("sweep: ")]
    assert [line.split(",")[0] for line in progress] == ["sweep: 1/2 trials done", "sweep: 2/2 trials done"]
    assert "best val_ensemble_balanced_accuracy" in progress[-1], progress
    client = MlflowClient()
    children = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    names = sorted(r.info.run_name for r in children)
    assert len(names) == 2 and len(set(names)) == 2, names
    for run in children:
        name, tags = run.info.run_name, run.data.tags
        assert name.startswith(f"{tags['schedule']} lr=") and name.endswith(" [trial]") and len(name) < 60
        index = name.split(" fp32 s0 #", 1)[1].split()[0]
        assert tags["trial"].endswith("_" + index.zfill(5)), "the Ray trial id stays a tag"
        (inp,) = run.inputs.dataset_inputs
        assert inp.dataset.name == "dataset" and inp.dataset.digest == cache.version
        assert {t.key: t.value for t in inp.tags}["mlflow.data.context"] == "training"
        assert '"n"' in inp.dataset.schema and '"split"' in inp.dataset.schema
        assert run.info.status == "FINISHED" and tags["trial_outcome"] == "completed"
