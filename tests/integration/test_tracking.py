"""MLflow helpers against a real tracking store (sqlite + local artifacts in tmp_path)."""

from __future__ import annotations

import socket
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from torch import nn

from ml.tracking import models as tracked_models
from ml.tracking import registry
from ml.tracking import runs as tracking_runs
from ml.tracking.runs import ServiceUnavailableError
from tests.conftest import free_port

CLASSES = ["acne", "eczema", "nevus"]
HISTORY = [
    {"epoch": 0, "train_loss": 1.1, "val_loss": 1.0, "val_macro_f1": 0.30, "lr_group_0": 1e-3, "epoch_seconds": 2.0},
    {"epoch": 1, "train_loss": 0.8, "val_loss": 0.9, "val_macro_f1": 0.45, "lr_group_0": 5e-4, "epoch_seconds": 1.5},
]
CONFIG = {
    "schedule": "sgdr_dlr",
    "optim": {"lr": 0.01, "momentum": 0.9},
    "storage": {"endpoint": "http://user:hunter2@127.0.0.1:9000", "aws_secret_access_key": "hunter2"},
    "api_token": "hunter2",
}


def _tiny_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, len(CLASSES))
    )


def _assert_same_weights(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], v) for k, v in expected.items())


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A fresh sqlite tracking store with artifacts under tmp; the previous URI is restored."""
    from tests.conftest import mlflow_env, restore_mlflow

    root = tmp_path_factory.mktemp("mlflow")
    saved = mlflow_env()
    uri = tracking_runs.configure_mlflow(f"sqlite:///{root}/mlflow.db")
    mlflow.set_experiment(  # exports MLFLOW_EXPERIMENT_ID, which this module's tests run on
        experiment_id=mlflow.create_experiment("skinflow-train", artifact_location=str(root / "artifacts"))
    )
    yield uri, root
    restore_mlflow(saved)  # not set_*_uri(previous): those would pin the registry for later modules


@pytest.fixture(scope="module")
def logged(store, tmp_path_factory):
    """One training run logged with every helper: ``(run_id, model, plot, model_info)``."""
    files = tmp_path_factory.mktemp("files")
    plot = files / "curves.png"
    plot.write_bytes(b"\x89PNG\r\n\x1a\nnot-really")
    manifest = pd.DataFrame({"path": ["a.jpg", "b.jpg"], "label": ["acne", "nevus"], "split": ["train", "val"]})
    model = _tiny_model(0)
    with mlflow.start_run() as run:
        tracking_runs.log_params(CONFIG)
        for row in HISTORY:  # as the epoch loggers of fit and of Tune trials log them
            mlflow.log_metrics(tracking_runs.epoch_metrics(row), step=row["epoch"])
        tracking_runs.log_plots([plot])
        tracking_runs.log_report_json("metrics", {"val_macro_f1": 0.45, "classes": CLASSES})
        tracking_runs.log_dataset_input("f" * 64, "synth10", "s3://skinflow/datasets/synth10", manifest)
        tracking_runs.set_standard_tags("f" * 64, tracking_runs.git_commit(), "sgdr_dlr", True, "cpu")
        example = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
        info = tracked_models.log_torch_model(model, "tiny", CLASSES, example)
    return run.info.run_id, model, plot, info


def test_configure_defaults_to_the_settings_uri(store, monkeypatch) -> None:
    from ml.settings import get_settings

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store[0])
    get_settings.cache_clear()
    try:
        assert tracking_runs.configure_mlflow(None) == store[0]
        assert mlflow.get_registry_uri() == store[0]
    finally:
        get_settings.cache_clear()


def test_metrics_are_logged_per_epoch_under_conventional_names(logged) -> None:
    client = MlflowClient()
    for name in ("train_loss", "val_loss", "val_macro_f1", "lr_group_0", "epoch_seconds"):
        points = sorted((m.step, m.value) for m in client.get_metric_history(logged[0], name))
        assert points == [(e["epoch"], pytest.approx(e[name])) for e in HISTORY]


def test_history_with_unconventional_names_is_rejected() -> None:
    with pytest.raises(ValueError, match="valLoss"):
        tracking_runs.epoch_metrics({"epoch": 1, "valLoss": 0.3})
    assert tracking_runs.epoch_metrics(
        {"epoch": 2, "val_loss": float("nan"), "train_loss": 0.5, "val_auroc_macro": None}
    ) == {"train_loss": 0.5}


def test_params_hold_the_flat_config_without_secrets(logged) -> None:
    params = MlflowClient().get_run(logged[0]).data.params
    assert params["optim.lr"] == "0.01" and params["schedule"] == "sgdr_dlr"
    assert params["storage.endpoint"] == "http://***@127.0.0.1:9000"
    assert "storage.aws_secret_access_key" not in params and "api_token" not in params
    assert not any("hunter2" in v for v in params.values())


def test_redact_recognises_secret_like_keys() -> None:
    kept = tracking_runs.redact({"apiKey": 1, "db_password": 2, "Credentials": {"x": 1}, "keep_best": 3, "lr": 4})
    assert kept == {"keep_best": 3, "lr": 4}
    assert tracking_runs.flatten_config({"a": {"b": {"c": 1}}, "d": [1, 2]}) == {"a.b.c": "1", "d": "[1, 2]"}


def test_tags_dataset_input_and_artifacts(logged) -> None:
    client = MlflowClient()
    run = client.get_run(logged[0])
    tags = run.data.tags
    assert tags["dataset_version"] == "f" * 64
    assert (tags["schedule"], tags["amp"], tags["device"]) == ("sgdr_dlr", "True", "cpu")
    # the checkout's HEAD, not the "unknown" fallback (the suite runs inside the git checkout)
    import subprocess

    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert tags["git_commit"] == head and len(head) == 40
    [dataset_input] = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == "synth10"
    assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "training"
    top = {a.path for a in client.list_artifacts(logged[0])}
    assert {"plots", "reports", "model"} <= top
    assert [a.path for a in client.list_artifacts(logged[0], "plots")] == ["plots/curves.png"]
    model_files = {a.path for a in client.list_artifacts(logged[0], "model")}
    assert {"model/state_dict.pt", "model/model_meta.json", "model/MLmodel"} <= model_files
    report = mlflow.artifacts.load_dict(f"runs:/{logged[0]}/reports/metrics.json")
    assert report == {"val_macro_f1": 0.45, "classes": CLASSES}


def test_git_commit_outside_a_repository_is_none(tmp_path: Path) -> None:
    assert tracking_runs.git_commit(tmp_path) is None


def test_registry_versions_aliases_and_state_dict_round_trip(logged) -> None:
    run_id, model, _, info = logged
    name = "skin-lesion-classifier"
    assert registry.get_alias_version(name, "champion") is None
    first = registry.register_version(info.model_uri, name, tags={"gate": "first"})
    other, snapshots = _tiny_model(1), [_tiny_model(2).state_dict(), _tiny_model(3).state_dict()]
    with mlflow.start_run() as second_run:
        second_info = tracked_models.log_torch_model(
            other,
            "tiny",
            CLASSES,
            np.zeros((1, 3, 16, 16), np.float32),
            serialization_format="pickle",
            extra_meta={"norm": [[0.5] * 3, [0.2] * 3]},
            snapshots=snapshots,
        )
    second = registry.register_version(second_info.model_uri, name)
    assert MlflowClient().get_model_version(name, second).run_id == second_run.info.run_id
    assert (first, second) == ("1", "2")
    registry.set_alias(name, "champion", first)
    registry.set_alias(name, "challenger", second)
    assert registry.get_alias_version(name, "champion") == "1"
    assert registry.get_alias_version(name, "challenger") == "2"
    assert MlflowClient().get_model_version(name, first).tags == {"gate": "first"}

    for uri, expected in (
        (f"models:/{name}@champion", model),
        (f"models:/{name}/2", other),
        (f"runs:/{run_id}/model", model),
    ):
        # the single model's weights, as fine-tuning from a registered model reads them
        with tempfile.TemporaryDirectory() as tmp:
            state = torch.load(tracked_models.fetch_weights(uri, Path(tmp)), map_location="cpu", weights_only=True)
        meta = tracked_models.load_model_meta(uri)
        assert (meta["arch"], meta["classes"], meta["num_classes"]) == ("tiny", CLASSES, 3)
        _assert_same_weights(state, expected.state_dict())

    states, meta = tracked_models.load_model_states(f"models:/{name}@champion")
    assert meta["snapshots"] == 0 and len(states) == 1
    _assert_same_weights(states[0], model.state_dict())
    states, meta = tracked_models.load_model_states(f"models:/{name}@challenger")
    assert meta["snapshots"] == 2 and meta["norm"] == [[0.5] * 3, [0.2] * 3]
    for got, expected in zip(states, snapshots, strict=True):
        _assert_same_weights(got, expected)

    flavour = mlflow.pytorch.load_model(f"models:/{name}@challenger")
    x = torch.rand(5, 3, 16, 16)
    assert torch.allclose(flavour(x), other(x))
    assert info.model_uri.startswith("models:/")

    registry.delete_version(name, second)
    assert registry.get_alias_version(name, "challenger") is None
    assert [str(v.version) for v in MlflowClient().search_model_versions(f"name='{name}'")] == ["1"]


def test_unreachable_tracking_server_raises_after_retries() -> None:
    port = free_port()
    with socket.socket() as probe:  # nothing listens on the port
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    url = f"http://127.0.0.1:{port}"
    start = time.monotonic()
    with pytest.raises(ServiceUnavailableError, match=rf"MLflow tracking server at {url} is unreachable.*3 attempts"):
        tracking_runs.check_mlflow_available(url, retries=3, backoff=0.2)
    assert time.monotonic() - start >= 0.2 + 0.4


def test_local_store_needs_no_server(store) -> None:
    tracking_runs.check_mlflow_available(store[0], retries=1, backoff=0.0)


def test_logged_flavour_serves_the_input_example_like_the_module(logged) -> None:
    """MLflow's own serving-input check is switched off when logging (it costs a reload per
    run), so the round trip it would do is asserted here: the pyfunc built from the pt2 file
    accepts the logged serving example and predicts what the module predicts."""
    import json

    from mlflow.models import Model

    run_id, model, _, info = logged
    local = Path(mlflow.artifacts.download_artifacts(info.model_uri))
    mlmodel = Model.load(local / "MLmodel")
    assert mlmodel.signature is not None and mlmodel.saved_input_example_info is not None
    serving = json.loads((local / "serving_input_example.json").read_text())
    example = np.asarray(serving["inputs"], dtype=np.float32)
    predicted = mlflow.pyfunc.load_model(info.model_uri).predict(example)
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(example)).numpy()
    np.testing.assert_allclose(np.asarray(predicted), expected, rtol=1e-5, atol=1e-6)


def test_epoch_logger_writes_every_row_before_fit_returns(store) -> None:
    """Rows are queued asynchronously but are all in the store once ``fit`` returns."""
    from ml.train.config import TrainConfig
    from ml.train.loop import fit
    from tasks.training import MlflowEpochLogger

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(len(CLASSES)), 8)
    images = (rng.random((len(labels), 16, 16, 3)) * 60 + labels[:, None, None, None] * 80).astype(np.uint8)
    with mlflow.start_run() as run:
        pass
    cfg = TrainConfig(arch="resnet18", schedule="sgd", lr=0.01, epochs=3, batch_size=8, progress=False, snapshots=0)
    result = fit((images, labels), (images, labels), CLASSES, cfg, callbacks=[MlflowEpochLogger(run.info.run_id)])
    history = MlflowClient().get_metric_history(run.info.run_id, "val_loss")
    assert sorted(m.step for m in history) == [1, 2, 3]
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(
        [row["val_loss"] for row in result.history]
    )


def test_epoch_logger_reports_a_failed_write(store) -> None:
    from tasks.training import MlflowEpochLogger

    epoch_logger = MlflowEpochLogger("0" * 32)  # no such run
    epoch_logger.on_epoch_end(1, {"epoch": 1, "val_loss": 0.5}, None)
    with pytest.raises(Exception, match="0" * 32):
        epoch_logger.flush()


def test_log_torch_model_needs_an_active_run(store) -> None:
    assert mlflow.active_run() is None
    with pytest.raises(RuntimeError, match="active MLflow run"):
        tracked_models.log_torch_model(_tiny_model(0), "tiny", CLASSES, np.zeros((1, 3, 16, 16), np.float32))
