"""The MLflow records the study tasks and the tune and validate flows write through ml.tracking
(runs.py's run-id helpers, trials.py's sweep records, training.py's study fits, studies.py's
augcheck and curation A/B runs), against a throwaway sqlite store."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
from mlflow import MlflowClient

from ml.tracking import runs as tracking_runs
from ml.tracking import studies, trials
from ml.tracking import training as tracked_training
from tests.conftest import mlflow_env, restore_mlflow


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    root = tmp_path_factory.mktemp("studies")
    saved = mlflow_env()
    tracking_runs.configure_mlflow(f"sqlite:///{root / 'mlflow.db'}")
    yield tracking_runs.ensure_experiment("studies", artifact_location=(root / "artifacts").as_uri()).experiment_id
    restore_mlflow(saved)  # not set_*_uri(previous): those would pin the registry for later modules


def _run(experiment: str, name: str = "r") -> str:
    return tracking_runs.create_run(experiment, name)


def _artifacts(run_id: str, path: str | None = None) -> set[str]:
    client = MlflowClient()
    out = set()
    for item in client.list_artifacts(run_id, path):
        out |= _artifacts(run_id, item.path) if item.is_dir else {item.path}
    return out


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n")
    return path


def test_run_id_helpers(experiment, tmp_path) -> None:
    run_id = _run(experiment)
    assert tracking_runs.set_run_tags(run_id, {"a": 1, "b": "x"}) == {"a": "1", "b": "x"}
    assert tracking_runs.log_run_params(run_id, {"long": "y" * 600, "n": 3}, max_chars=500)["n"] == "3"
    tracking_runs.log_run_metrics(run_id, {"m": 2, "t": 0.5})
    tracking_runs.log_run_metrics(run_id, {"z": 1.0}, step=0, timestamp_ms=0)
    rows = [{"iteration": i, "loss": 1.0 / (i + 1), "gp": 0.1} for i in range(3)]
    assert tracking_runs.log_metric_history(run_id, rows, ("loss", "gp"), step_key="iteration", prefix="c_") == 6
    assert tracking_runs.log_run_artifact(run_id, _png(tmp_path / "a.png"), "reports") == "reports/a.png"
    tracking_runs.terminate_run(run_id)
    run = MlflowClient().get_run(run_id)
    assert run.data.tags["a"] == "1" and run.data.params["long"] == "y" * 500 and run.data.params["n"] == "3"
    assert run.data.metrics == {"m": 2.0, "t": 0.5, "z": 1.0, "c_loss": pytest.approx(1 / 3), "c_gp": 0.1}
    history = MlflowClient().get_metric_history(run_id, "c_loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (1, 0.5), (2, pytest.approx(1 / 3))]
    [z] = MlflowClient().get_metric_history(run_id, "z")
    assert z.timestamp == 0 and z.step == 0
    assert _artifacts(run_id) == {"reports/a.png"}


def test_log_run_report(experiment, tmp_path) -> None:
    run_id = _run(experiment)
    plots = [_png(tmp_path / "p1.png"), _png(tmp_path / "p2.png")]
    logged = tracking_runs.log_run_report(run_id, "study", {"k": 1}, plots, {"val_x": 0.25})
    assert logged == ["plots/p1.png", "plots/p2.png"] and mlflow.active_run() is None
    run = MlflowClient().get_run(run_id)
    assert run.data.metrics == {"val_x": 0.25} and run.info.status == "FINISHED"
    assert _artifacts(run_id) == {"plots/p1.png", "plots/p2.png", "reports/study.json"}
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="reports/study.json", dst_path=tmp_path)
    assert json.loads(Path(local).read_text()) == {"k": 1}


def test_sweep_records(experiment) -> None:
    run_id = _run(experiment, "tune")
    assert trials.log_lr_brackets(run_id, {"sgd": (0.001234567, 0.1), "adam": (1e-5, 1e-3)}) == {
        "lr_bracket_sgd": "0.001235..0.1",
        "lr_bracket_adam": "1e-05..0.001",
    }
    best = {"schedule": "sgd", "amp": False, "arch": "resnet18", "lr": 0.01, "score": 0.7, "val_acc": 0.6}
    result = {"best": best, "trials": [best], "failed": [{"error": "x"}]}
    trials.log_sweep_result(run_id, result, ("score", "val_acc"))
    run = MlflowClient().get_run(run_id)
    assert {k: v for k, v in run.data.tags.items() if k.startswith("best_")} == {
        "best_schedule": "sgd",
        "best_amp": "False",
        "best_arch": "resnet18",
        "best_lr": "0.01",
    }
    assert run.data.metrics == {"best_score": 0.7, "best_val_acc": 0.6, "failed_trials": 1.0}
    assert run.data.params["lr_bracket_sgd"] == "0.001235..0.1"
    assert _artifacts(run_id) == {"reports/tune_trials.json"}


def test_study_fit_records(experiment) -> None:
    run_id = _run(experiment, "fit")
    precision = SimpleNamespace(tags=lambda: {"precision": "fp32", "precision_reason": "amp off"})
    result = SimpleNamespace(
        config={"schedule": "sgd", "amp": False, "lr": 0.1}, device="cpu", precision=precision, wall_seconds=1.5
    )
    tracked_training.log_fit_result(run_id, result, "v1", {"train_images": 8})
    m = {"accuracy": 0.5, "balanced_accuracy": 0.25, "auroc_macro": None}
    keys = ("accuracy", "balanced_accuracy", "auroc_macro")
    assert tracked_training.split_metrics(m, "test", keys) == {"test_accuracy": 0.5, "test_balanced_accuracy": 0.25}
    tracked_training.log_split_metrics(run_id, m, "test", keys)
    run = MlflowClient().get_run(run_id)
    assert run.data.params == {
        "schedule": "sgd",
        "amp": "False",
        "lr": "0.1",
        "train_images": "8",
        "dataset_version": "v1",
    }
    assert run.data.tags["schedule"] == "sgd" and run.data.tags["dataset_version"] == "v1"
    assert run.data.tags["precision"] == "fp32" and run.data.tags["device"] == "cpu"
    assert run.data.metrics == {"wall_seconds": 1.5, "test_accuracy": 0.5, "test_balanced_accuracy": 0.25}
    agg = {"accuracy": {"mean": 0.5, "std": None}, "auroc_macro": {"mean": None, "std": None}}
    assert tracked_training.mean_std_metrics(agg, "val") == {"val_accuracy_mean": 0.5, "val_accuracy_std": 0.0}


def test_curation_ab_run(experiment, tmp_path) -> None:
    run_id = _run(experiment, "ab")
    report_file = tmp_path / "curation_ab.json"
    report_file.write_text("{}")
    report = {
        "data": "data/synth",
        "steps": ["quarantine", "fov_crop"],
        "eval_split": "test",
        "curated": {"dir": "/x" * 300, "counts": {"kept": 10, "changed": 2}},
        "config": {"lr": 0.01, "device": "cpu", "schedule": "sgd"},
        "comparison": [{"metric": "macro_f1", "baseline": 0.5, "curated": 0.6, "delta": 0.1}],
    }
    studies.log_curation_ab_run(run_id, report, report_file)
    run = MlflowClient().get_run(run_id)
    assert run.data.params == {
        "data": "data/synth",
        "steps": "quarantine;fov_crop",
        "eval_split": "test",
        "curated_dir": ("/x" * 300)[:500],
        "config_lr": "0.01",
        "config_schedule": "sgd",
    }, "runtime-only fields (device) are left out"
    assert run.data.metrics == {
        "baseline_test_macro_f1": 0.5,
        "curated_test_macro_f1": 0.6,
        "delta_test_macro_f1": 0.1,
        "curation_kept": 10.0,
        "curation_changed": 2.0,
    }
    assert _artifacts(run_id) == {"reports/curation_ab.json"}


def test_augcheck_run(experiment, tmp_path) -> None:
    run_id = _run(experiment, "augcheck")
    history = [
        {"iteration": i, "d_loss": 1.0, "g_loss": 2.0, "wasserstein": 0.5, "gp": 0.1, "alpha": 0.5} for i in range(3)
    ]
    gan = SimpleNamespace(
        history=history,
        grids=[str(_png(tmp_path / "stage_0.png"))],
        device="cpu",
        precision=SimpleNamespace(tags=lambda: {"precision": "fp32"}),
        wall_seconds=3.0,
    )
    report = {
        "config": {"check": {"ratio": 0.5}, "gan": {"latent_dim": 8}, "data": {"source": "s"}},
        "dataset_version": "v1",
        "synthetic": {"dataset_version": "syn1"},
        "verdict": {"verdict": "safe", "safe": True},
        "summary": {"mean": 0.5, "std": 0.1, "range": 0.2, "error": 0.0},
        "ratio": 0.5,
        "memorisation": {"memorised_share": 0.0, "distance_ratio": 1.2},
        "control": {"mixed": {"mean": 0.49}},
        "train_on_synthetic": {"tstr_accuracy": 0.7, "trtr_accuracy": 0.8},
        "table": [{"run": 0, "estimate": 0.5}, {"run": 1, "estimate": 0.52}],
    }
    studies.log_augcheck_run(run_id, report, gan, [_png(tmp_path / "closest_pairs.png")])
    run = MlflowClient().get_run(run_id)
    assert run.data.params["check.ratio"] == "0.5" and run.data.params["dataset_version"] == "v1"
    assert run.data.tags["verdict"] == "safe" and run.data.tags["synthetic_dataset_version"] == "syn1"
    assert run.data.tags["precision"] == "fp32" and run.data.tags["device"] == "cpu"
    assert run.data.metrics["safe"] == 1.0 and run.data.metrics["gan_wall_seconds"] == 3.0
    assert run.data.metrics["estimate_mean"] == 0.5 and run.data.metrics["trtr_accuracy"] == 0.8
    assert [m.step for m in MlflowClient().get_metric_history(run_id, "gan_d_loss")] == [0, 1, 2]
    assert {f"gan_{k}" for k in studies.GAN_CURVES} <= set(run.data.metrics)
    assert _artifacts(run_id) == {
        "plots/gan/stage_0.png",
        "plots/closest_pairs.png",
        "reports/estimates.json",
        "reports/augcheck.json",
    }
