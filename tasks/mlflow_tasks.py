"""Prefect tasks around MLflow runs and the model registry (with retries on I/O)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from mlflow import MlflowClient
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError

from ml.train import recipes
from ml.eval.gate import GateDecision, PromotionPolicy, decide
from ml.settings import get_settings
from ml.tracking import models as tracked_models, registry, runs as tracking_runs
from tasks.common import IO_RETRIES, IO_RETRY_DELAYS, markdown_table, publish_markdown


@task(name="open-mlflow-run", retries=IO_RETRIES, retry_delay_seconds=IO_RETRY_DELAYS, cache_policy=NO_CACHE)
def open_run(experiment: str, run_name: str, parent_run_id: str | None = None,
             tags: dict[str, str] | None = None) -> tuple[str, str]:
    """Create an MLflow run (child of ``parent_run_id`` if given); returns (run_id, experiment_id)
    and logs the link to the experiment's runs in the MLflow UI. Fails with a message naming
    the tracking server when it is unreachable."""
    uri = tracking_runs.configure_mlflow(get_settings().mlflow_tracking_uri)
    if uri.startswith("http"):
        tracking_runs.check_mlflow_available(uri)
    exp = _experiment(experiment, uri)
    all_tags = {"mlflow.runName": run_name, **(tags or {})}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = MlflowClient().create_run(exp.experiment_id, tags=all_tags, run_name=run_name)
    try:
        get_run_logger().info("MLflow run %r: %s", run_name, tracking_runs.runs_page_url(
            exp.experiment_id, uri if uri.startswith("http") else tracking_runs.MLFLOW_UI))
    except MissingContextError:  # called outside a flow (open_run.fn)
        pass
    return run.info.run_id, exp.experiment_id


def _experiment(name: str, uri: str):
    """Get or create the experiment, tagged as model development so that the MLflow UI opens it
    on its runs (an existing untagged one gets the tag); with a local store its artifacts go
    under the data root (a server chooses its own artifact destination)."""
    location = None
    if not uri.startswith("http"):
        location = (get_settings().data_root / "mlartifacts").resolve().as_uri()
    return tracking_runs.ensure_experiment(name, artifact_location=location)


@task(name="close-mlflow-run", retries=IO_RETRIES, retry_delay_seconds=IO_RETRY_DELAYS, cache_policy=NO_CACHE)
def close_run(run_id: str, status: str = "FINISHED") -> None:
    MlflowClient().set_terminated(run_id, status)


@contextmanager
def tracked_run(experiment: str, run_name: str, parent_run_id: str | None = None,
                tags: dict[str, str] | None = None) -> Iterator[tuple[str, str]]:
    """An MLflow run around a block: yields ``(run_id, experiment_id)``; the run ends FINISHED,
    FAILED when the block raises, KILLED when it is interrupted (Ctrl-C), and the block's own
    exception is what propagates (a failure to close the run is only logged then)."""
    run_id, experiment_id = open_run(experiment, run_name, parent_run_id, tags)
    try:
        yield run_id, experiment_id
    except BaseException as exc:
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        try:
            close_run(run_id, status)
        except Exception as close_error:  # noqa: BLE001 - keep the block's exception
            get_run_logger().warning("could not mark MLflow run %s %s: %s", run_id, status, close_error)
        raise
    close_run(run_id)


@task(name="log-validation", retries=IO_RETRIES, retry_delay_seconds=IO_RETRY_DELAYS, cache_policy=NO_CACHE)
def log_validation(report: dict, docs_dir: Path, source: str) -> str:
    """A skinflow-validate run with the results JSON and the GX Data Docs site."""
    run_id, _ = open_run.fn("skinflow-validate", tracking_runs.run_name("validate", data=report["dataset_version"]),
                            tags={"dataset_version": report["dataset_version"]})
    client = MlflowClient()
    client.log_param(run_id, "source", source)
    client.log_metric(run_id, "critical_failures", len(report["critical_failures"]))
    client.log_metric(run_id, "warnings", len(report["warnings"]))
    client.set_tag(run_id, "validation_passed", str(report["passed"]))
    client.log_dict(run_id, report, "reports/validation.json")
    if Path(docs_dir).is_dir():
        client.log_artifacts(run_id, str(docs_dir), artifact_path="reports/data_docs")
    if report.get("summary_html"):
        client.log_artifact(run_id, report["summary_html"], artifact_path="reports")
    client.set_terminated(run_id, "FINISHED")
    return run_id


@task(name="register-model", retries=IO_RETRIES, retry_delay_seconds=IO_RETRY_DELAYS, cache_policy=NO_CACHE)
def register_model(model_uri: str, tags: dict[str, Any]) -> str:
    """Register the logged model ``model_uri`` (``log_training_run(...)["model_uri"]``) as a new
    version and make it ``challenger``. If aliasing fails, the half-made version is deleted so
    that no partial version stays registered."""
    name = get_settings().registered_model
    version = registry.register_version(model_uri, name, tags={k: str(v) for k, v in tags.items()})
    try:
        registry.set_alias(name, "challenger", version)
    except Exception:
        registry.delete_version(name, version)
        raise
    return version


def _predictions(model_uri: str, images: np.ndarray, labels: np.ndarray, classes: list[str],
                 recompute: bool = False) -> tuple[np.ndarray, dict, str]:
    """Top-1 predictions of a stored model on the held-out set: the probabilities its run
    stored for exactly this set (same digest) when there are any, else predicted again from
    its stored weights. Returns ``(pred, meta, "stored" | "recomputed")``."""
    from ml.eval.gate import heldout_digest

    if not recompute:
        probs = tracked_models.load_predictions(model_uri, heldout_digest(images, labels, classes))
        if probs is not None:
            return probs.argmax(1), tracked_models.load_model_meta(model_uri), "stored"
    states, meta = tracked_models.load_model_states(model_uri)
    probs = recipes.predict_logged(meta["arch"], meta["classes"], states, meta["norm"], images,
                                   tta=meta.get("tta", False))  # as the run evaluated (and serves) it
    return probs.argmax(1), meta, "recomputed"


@task(name="promotion-gate", retries=IO_RETRIES, retry_delay_seconds=IO_RETRY_DELAYS, cache_policy=NO_CACHE)
def promotion_gate(version: str, images: np.ndarray, labels: np.ndarray, classes: list[str],
                   policy_path: str | None = None, recompute: bool = False) -> dict[str, Any]:
    """Compare challenger ``version`` with the current champion on the same held-out data;
    move ``champion`` only when :func:`ml.eval.gate.decide` says so. Logged and shown as an artifact.

    Each model's predictions are the ones its run stored for this exact held-out set (matched
    by digest), else they are predicted again from its stored weights (``recompute=True``
    always does that)."""
    logger = get_run_logger()
    settings = get_settings()
    name = settings.registered_model
    policy = PromotionPolicy.load(policy_path or settings.policies_dir / "promotion.yaml")
    challenger_pred, meta, challenger_source = _predictions(f"models:/{name}/{version}", images, labels, classes,
                                                            recompute)
    champion = registry.get_alias_version(name, "champion")
    champion_pred, champion_source = None, None
    if champion is not None:
        champion_pred, champ_meta, champion_source = _predictions(f"models:/{name}/{champion}", images, labels,
                                                                  classes, recompute)
        if champ_meta["classes"] != meta["classes"]:
            raise ValueError(f"champion v{champion} and challenger v{version} have different classes")
    decision: GateDecision = decide(labels, challenger_pred, champion_pred, classes, policy)
    if decision.promote:
        registry.set_alias(name, "champion", version)
    client = MlflowClient()
    client.set_model_version_tag(name, version, "gate_decision", "promoted" if decision.promote else "kept")
    client.set_model_version_tag(name, version, "gate_reason", decision.reason[:500])
    out = {"version": version, "champion_before": champion, "promoted": decision.promote,
           "reason": decision.reason, "numbers": decision.numbers,
           "predictions": {"challenger": challenger_source, "champion": champion_source}}
    logger.info("promotion gate: v%s %s (%s)", version, "PROMOTED" if decision.promote else "kept as challenger",
                decision.reason)
    rows = [{"quantity": k, "value": v} for k, v in tracking_runs.flatten_config(
        {**decision.numbers, "predictions": out["predictions"]}).items()]
    publish_markdown("retrain-gate", f"## Promotion gate: v{version} -> "
                     f"{'champion' if decision.promote else 'stays challenger'}\n\n{decision.reason}\n\n"
                     + markdown_table(rows))
    return out

