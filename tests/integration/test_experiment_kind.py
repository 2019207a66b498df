"""Every experiment skinflow opens is tagged as model development, so that the MLflow 3 UI shows
its runs rather than the GenAI overview (real sqlite store)."""

from __future__ import annotations

import mlflow
import pytest
from mlflow import MlflowClient

from ml.settings import get_settings
from ml.tracking.runs import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, ensure_experiment
from tests.conftest import use_local_stores


@pytest.fixture()
def store(tmp_path, monkeypatch):
    use_local_stores(monkeypatch, tmp_path)
    yield tmp_path
    get_settings.cache_clear()


def test_the_ui_reads_this_tag_and_value() -> None:
    """The names come from MLflow's UI bundle, not from memory."""
    from pathlib import Path

    js = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    main = next(js.glob("main.*.js")).read_text(errors="replace")
    assert f'"{EXPERIMENT_KIND_TAG}"' in main and f'="{EXPERIMENT_KIND}"' in main


def test_open_run_creates_tagged_experiments(store) -> None:
    from tasks.mlflow_tasks import open_run

    run_id, experiment_id = open_run.fn("skinflow-train", "sgd lr=0.01 fp32 s0 [train]")
    exp = MlflowClient().get_experiment(experiment_id)
    assert exp.tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert exp.artifact_location.startswith((store / "data").as_uri())
    assert MlflowClient().get_run(run_id).info.run_name == "sgd lr=0.01 fp32 s0 [train]"


def test_an_existing_untagged_experiment_gets_the_tag(store) -> None:
    from tasks.mlflow_tasks import open_run

    old = mlflow.create_experiment("skinflow-tune")  # as made before skinflow tagged experiments
    assert EXPERIMENT_KIND_TAG not in MlflowClient().get_experiment(old).tags
    _, experiment_id = open_run.fn("skinflow-tune", "sgd s0 [tune]")
    assert experiment_id == old
    assert MlflowClient().get_experiment(old).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND


def test_a_kind_set_by_hand_is_kept(store) -> None:
    exp_id = mlflow.create_experiment("mine", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    assert ensure_experiment("mine").tags[EXPERIMENT_KIND_TAG] == "genai_development"
    assert ensure_experiment("mine").experiment_id == exp_id
