"""The records of the study flows' parent runs: the augmentation check (:func:`log_augcheck_run`)
and the curated-vs-original A/B comparison (:func:`log_curation_ab_run`). Each maps a finished
report onto the run's params, metrics, tags and artifacts; nothing is decided here. Plain
functions with no Prefect import: ``tasks/augcheck.py`` and ``tasks/curation.py`` add retries."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow

from ml.tracking import runs as tracking_runs
from ml.train.config import TrainConfig

if TYPE_CHECKING:
    from ml.gan.train import GanResult

# the ProGAN's per-iteration curves, logged as ``gan_<key>`` by iteration
GAN_CURVES = ("d_loss", "g_loss", "wasserstein", "gp", "alpha")
_PARAM_CHARS = 500  # the curation A/B's params are cut to this length


def augcheck_metrics(report: Mapping[str, Any], gan_wall_seconds: float) -> dict[str, float]:
    """The augmentation check's figures as the parent run's metrics."""
    s = report["summary"]
    return {
        "estimate_mean": s["mean"],
        "estimate_std": s["std"],
        "estimate_range": s["range"],
        "estimate_error": s["error"],
        "ratio": report["ratio"],
        "memorised_share": report["memorisation"]["memorised_share"],
        "distance_ratio": report["memorisation"]["distance_ratio"],
        "control_mixed_estimate": report["control"]["mixed"]["mean"],
        "tstr_accuracy": report["train_on_synthetic"]["tstr_accuracy"],
        "trtr_accuracy": report["train_on_synthetic"]["trtr_accuracy"],
        "gan_wall_seconds": gan_wall_seconds,
        "safe": float(report["verdict"]["safe"]),
    }


def log_augcheck_run(run_id: str, report: Mapping[str, Any], gan: GanResult, plots: Iterable[str | Path]) -> None:
    """The augmentation check's parent run ``run_id``: the ProGAN's curves (``gan_<key>`` of
    :data:`GAN_CURVES` by iteration), params (the check's, the GAN's and the data's configs, the
    dataset version; redacted), tags (dataset and synthetic dataset versions, ``verdict``,
    ``git_commit``, ``device``, the precision's), :func:`augcheck_metrics`, the GAN's grids per
    stage under ``plots/gan``, ``plots``, the per-classifier table as ``reports/estimates.json``
    (an MLflow table) and the whole report as ``reports/augcheck.json``. Through
    ``mlflow.start_run(run_id=...)``, left FINISHED when done (its owner may end it again)."""
    tracking_runs.log_metric_history(run_id, gan.history, GAN_CURVES, step_key="iteration", prefix="gan_")
    with mlflow.start_run(run_id=run_id):
        tracking_runs.log_params(
            {
                "check": report["config"]["check"],
                "gan": report["config"]["gan"],
                "data": report["config"]["data"],
                "dataset_version": report["dataset_version"],
            }
        )
        mlflow.set_tags(
            {
                "dataset_version": report["dataset_version"],
                "synthetic_dataset_version": report["synthetic"]["dataset_version"],
                "verdict": report["verdict"]["verdict"],
                "git_commit": tracking_runs.git_commit() or "",
                "device": gan.device,
                **gan.precision.tags(),
            }
        )
        mlflow.log_metrics(augcheck_metrics(report, gan.wall_seconds))
        tracking_runs.log_files(gan.grids, "plots/gan")
        tracking_runs.log_plots(plots)
        tracking_runs.log_table_json(report["table"], "reports/estimates.json")
        tracking_runs.log_report_json("augcheck", report)


def curation_ab_params(report: Mapping[str, Any]) -> dict[str, Any]:
    """The A/B's params: the data, the curation steps, the evaluated split, the curated copy's
    folder and the training config as ``config_<field>`` without its runtime-only fields."""
    return {
        "data": report["data"],
        "steps": ";".join(report["steps"]),
        "eval_split": report["eval_split"],
        "curated_dir": report["curated"]["dir"],
        **{f"config_{k}": v for k, v in report["config"].items() if k not in TrainConfig.runtime_fields()},
    }


def curation_ab_metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """The A/B's metrics: ``<arm>_<split>_<metric>`` of each compared metric for the arms
    ``baseline``, ``curated`` and ``delta`` (where known), then ``curation_<status>``: how many
    images curation kept, changed, left out, ..."""
    split = report["eval_split"]
    metrics = {
        f"{arm}_{split}_{row['metric']}": row[arm]
        for row in report["comparison"]
        for arm in ("baseline", "curated", "delta")
        if row[arm] is not None
    }
    metrics.update({f"curation_{status}": n for status, n in report["curated"]["counts"].items()})
    return metrics


def log_curation_ab_run(run_id: str, report: Mapping[str, Any], report_file: str | Path) -> None:
    """The curation A/B's parent run ``run_id`` (client API): :func:`curation_ab_params` (each cut
    to 500 characters), :func:`curation_ab_metrics` and ``report_file`` under ``reports/``."""
    tracking_runs.log_run_params(run_id, curation_ab_params(report), max_chars=_PARAM_CHARS)
    tracking_runs.log_run_metrics(run_id, curation_ab_metrics(report))
    tracking_runs.log_run_artifact(run_id, report_file, artifact_path="reports")
