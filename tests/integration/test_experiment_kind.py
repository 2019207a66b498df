"""Every experiment skinflow opens is tagged as model development and carries skinflow's runs
view, which the links to its runs open (real sqlite store)."""

from __future__ import annotations

import json

import mlflow
import pytest
from mlflow import MlflowClient

from ml.settings import get_settings
from ml.tracking.runs import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    RUNS_VIEW_COLUMNS,
    RUNS_VIEW_TAG,
    ensure_experiment,
    runs_page_url,
)
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
    shared_view_prefix = RUNS_VIEW_TAG.rsplit(".", 1)[0] + "."
    assert f'"{shared_view_prefix}"' in main and '"viewStateShareKey"' in main
    assert 'MACHINE_LEARNING="machine_learning"' in main


def test_open_run_creates_tagged_experiments(store) -> None:
    from tasks.mlflow_tasks import open_run

    run_id, experiment_id = open_run.fn("skinflow-train", "sgd lr=0.01 fp32 s0 [train]")
    exp = MlflowClient().get_experiment(experiment_id)
    assert exp.tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert json.loads(exp.tags[RUNS_VIEW_TAG]) == {"selectedColumns": list(RUNS_VIEW_COLUMNS)}
    assert exp.artifact_location.startswith((store / "data").as_uri())
    assert MlflowClient().get_run(run_id).info.run_name == "sgd lr=0.01 fp32 s0 [train]"


def test_an_existing_untagged_experiment_gets_the_tag(store) -> None:
    from tasks.mlflow_tasks import open_run

    old = mlflow.create_experiment("skinflow-tune")  # as made before skinflow tagged experiments
    assert EXPERIMENT_KIND_TAG not in MlflowClient().get_experiment(old).tags
    _, experiment_id = open_run.fn("skinflow-tune", "sgd s0 [tune]")
    assert experiment_id == old
    tags = MlflowClient().get_experiment(old).tags
    assert tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND and RUNS_VIEW_TAG in tags


def test_a_kind_set_by_hand_is_kept(store) -> None:
    exp_id = mlflow.create_experiment("mine", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    assert ensure_experiment("mine").tags[EXPERIMENT_KIND_TAG] == "genai_development"
    assert ensure_experiment("mine").experiment_id == exp_id


def test_runs_page_url() -> None:
    assert runs_page_url("7", "http://127.0.0.1:5001/") == (
        "http://127.0.0.1:5001/#/experiments/7/runs?workflowType=machine_learning&viewStateShareKey=skinflow"
    )
