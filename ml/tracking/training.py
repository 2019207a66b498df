"""A training run's records in MLflow: each epoch's row while it trains (:class:`MlflowEpochLogger`),
the LR range test's curve (:func:`log_lr_finder`), the end of the run (:func:`log_training`:
params, tags, the dataset input, plots, report, held-out predictions, training digests, the
served model, then the evaluation metrics linked to that model and to the evaluated split) and
the repeated fits' mean and std (:func:`log_repeated_fits`). Called by ``tasks/training.py``;
the studies' fits (``tasks/robustness.py``, ``tasks/interpret.py``) record through
:func:`log_fit_result`, :func:`log_split_metrics` and :func:`mean_std_metrics`."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.models.model import ModelInfo

from ml.eval.gate import heldout_digest
from ml.tracking import models as tracked_models
from ml.tracking import runs as tracking_runs
from ml.tracking import serving
from ml.train.loop import Callback, TrainResult

if TYPE_CHECKING:
    from ml.data.cache import ImageCache
    from ml.data.manifest import Manifest

FINAL_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc_macro", "loss", "ece")
_BATCH = 1000  # MLflow's limit of metrics per log_batch


class MlflowEpochLogger(Callback):
    """Logs each epoch's row to an MLflow run (client API: safe from any thread).

    Rows go through MLflow's asynchronous queue so that training does not wait on the store
    (which may be a remote server); :meth:`on_train_end` waits until every row is written and
    raises if one failed."""

    def __init__(self, run_id: str):
        self.run_id = run_id
        self.client = MlflowClient()
        self._pending: list = []

    def on_train_begin(self, state) -> None:
        """A run resumed from a checkpoint logs the restored epochs too: it holds the whole history,
        and says where it resumed (tag ``restored_from_epoch``, the checkpoint's epoch)."""
        if state.epoch:
            self.client.set_tag(self.run_id, "restored_from_epoch", str(state.epoch))
        for row in state.history[: state.epoch]:
            self.on_epoch_end(row["epoch"], row, state)

    def on_epoch_end(self, epoch: int, metrics: dict, state) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, epoch) for k, v in tracking_runs.epoch_metrics(metrics).items()]
        # one call per epoch, not one per metric
        self._pending.append(self.client.log_batch(self.run_id, metrics=batch, synchronous=False))

    def on_train_end(self, result) -> None:
        self.flush()

    def flush(self) -> None:
        """Block until the queued rows are in the store (re-raises a failed write)."""
        pending, self._pending = self._pending, []
        for operation in pending:
            operation.wait()


def log_lr_finder(
    run_id: str, lrs: Sequence[float], losses: Sequence[float], plot: str | Path, summary: Mapping[str, Any]
) -> None:
    """An LR range test in run ``run_id``: the curve as ``lr_finder_loss`` / ``lr_finder_lr`` by
    iteration (non-finite points left out), its plot under ``plots/`` and ``summary`` as
    ``reports/lr_finder.json``."""
    client = MlflowClient()
    now = int(time.time() * 1000)
    curve = [
        Metric(name, float(v), now, i)
        for i, (lr, loss) in enumerate(zip(lrs, losses))
        for name, v in (("lr_finder_loss", loss), ("lr_finder_lr", lr))
        if math.isfinite(float(v))
    ]
    for start in range(0, len(curve), _BATCH):
        client.log_batch(run_id, metrics=curve[start : start + _BATCH])
    client.log_artifact(run_id, str(plot), artifact_path="plots")
    client.log_dict(run_id, dict(summary), "reports/lr_finder.json")


def final_metrics(metrics: Mapping[str, Any], eval_split: str) -> dict[str, float]:
    """A run's final (snapshot-ensemble) figures on ``eval_split`` as MLflow metrics,
    ``<split>_<metric>``; on val ``val_final_<metric>``, apart from the per-epoch series."""
    prefix = "val_final_" if eval_split == "val" else f"{eval_split}_"
    return {f"{prefix}{k}": float(metrics[k]) for k in FINAL_METRICS if metrics.get(k) is not None}


def log_training(
    run_id: str,
    result: TrainResult,
    evaluation: Mapping[str, Any],
    eval_split: str,
    cache: ImageCache,
    manifest: Manifest,
    plots: Iterable[str | Path],
    report: Mapping[str, Any],
    model_files: Callable[[], Mapping[str, str]],
    meta: Mapping[str, Any],
) -> ModelInfo:
    """The end of training run ``run_id``: params (the config and the dataset version), the
    conventional and precision tags, the dataset as its training input, ``plots``, ``report``
    as ``reports/classification_report.json``, the held-out probabilities and the training
    digests (for the promotion gate), ``wall_seconds``, the served model
    (:func:`ml.tracking.serving.log_serving_model` on ``model_files()``, which may block until
    the files are written) and, after it, the final metrics of ``evaluation`` on ``eval_split``,
    linked to that model and to the evaluated split as an ``mlflow.data`` dataset (name
    ``dataset-<split>``, digest: the evaluation set's :func:`ml.eval.gate.heldout_digest`, the
    key of the stored predictions). Returns the model's ``ModelInfo`` (``model_uri``, ``model_id``)."""
    images, labels = cache.subset(eval_split)
    digest = heldout_digest(images, labels, cache.classes)
    records = manifest.records[["path", "label", "split"]]
    with mlflow.start_run(run_id=run_id):
        tracking_runs.log_params({**result.config, "dataset_version": cache.version})
        tracking_runs.set_standard_tags(
            cache.version, tracking_runs.git_commit(), result.config["schedule"], result.config["amp"], result.device
        )
        mlflow.set_tags(result.precision.tags())  # what AMP became on this machine, and why
        tracking_runs.log_dataset_input(cache.version, "dataset", manifest.source, records)
        tracking_runs.log_plots(plots)
        tracking_runs.log_report_json("classification_report", report)
        tracked_models.log_predictions(eval_split, evaluation["probs"], digest)
        tracked_models.log_training_digests(run_id, manifest.records, cache.version)
        mlflow.log_metric("wall_seconds", result.wall_seconds)
        if result.trust is not None:  # ECE on the validation images before and after temperature scaling
            cal = result.trust.calibration
            mlflow.log_metrics(
                {"val_ece": cal.ece_before, "val_ece_calibrated": cal.ece_after, "temperature": cal.temperature}
            )
        for row in evaluation["metrics"].get("skin_tone_groups") or []:  # per skin-tone group, with its count
            mlflow.log_metrics(
                {
                    f"{eval_split}_balanced_accuracy_{row['group']}": float(row["balanced_accuracy"]),
                    f"{eval_split}_images_{row['group']}": float(row["n"]),
                }
            )
        served = serving.log_serving_model(model_files(), meta)
        evaluated = tracking_runs.log_evaluation_dataset(
            eval_split, digest, manifest.source, records[records["split"] == eval_split], cache.version
        )
        tracking_runs.log_evaluation_metrics(
            final_metrics(evaluation["metrics"], eval_split), served.model_id, evaluated
        )
    return served


def log_repeated_fits(run_id: str, agg: Mapping[str, Any], eval_split: str) -> None:
    """Repeated fits' figures in run ``run_id``: ``<split>_<metric>_mean`` and ``_std`` of each
    metric with a mean, and the whole aggregate as ``reports/repeated_fits.json``."""
    client = MlflowClient()
    for name, stats in agg["metrics"].items():
        if stats["mean"] is not None:
            client.log_metric(run_id, f"{eval_split}_{name}_mean", float(stats["mean"]))
            client.log_metric(run_id, f"{eval_split}_{name}_std", float(stats["std"] or 0.0))
    client.log_dict(run_id, dict(agg), "reports/repeated_fits.json")


def log_fit_result(
    run_id: str, result: TrainResult, dataset_version: str, extra_params: Mapping[str, Any] | None = None
) -> None:
    """A study's fit (robustness, interpret: no model logged) in run ``run_id``: params (the
    config, ``extra_params`` and the dataset version), the conventional and precision tags and
    ``wall_seconds``. Through ``mlflow.start_run(run_id=...)``, left FINISHED when done (its
    owner may end it again)."""
    with mlflow.start_run(run_id=run_id):
        tracking_runs.log_params({**result.config, **(extra_params or {}), "dataset_version": dataset_version})
        tracking_runs.set_standard_tags(
            dataset_version, tracking_runs.git_commit(), result.config["schedule"], result.config["amp"], result.device
        )
        mlflow.set_tags(result.precision.tags())
        mlflow.log_metric("wall_seconds", result.wall_seconds)


def split_metrics(metrics: Mapping[str, Any], split: str, keys: Iterable[str]) -> dict[str, float]:
    """``<split>_<key>`` of each of ``keys`` that ``metrics`` has (not None), as floats."""
    return {f"{split}_{k}": float(metrics[k]) for k in keys if metrics.get(k) is not None}


def log_split_metrics(run_id: str, metrics: Mapping[str, Any], split: str, keys: Iterable[str]) -> dict[str, float]:
    """A fit's scores on ``split`` in run ``run_id``: :func:`split_metrics` at step 0 (timestamp 0,
    as one figure, not a series). Returns what was logged."""
    return tracking_runs.log_run_metrics(run_id, split_metrics(metrics, split, keys), step=0, timestamp_ms=0)


def mean_std_metrics(aggregate: Mapping[str, Mapping[str, Any]], split: str) -> dict[str, float]:
    """Repeated fits' figures as metrics: ``<split>_<metric>_mean`` and ``_std`` (a missing std
    as 0) of each metric of ``aggregate`` (:func:`ml.eval.metrics.aggregate_runs`'s ``metrics``)
    with a mean."""
    out: dict[str, float] = {}
    for name, stats in aggregate.items():
        if stats["mean"] is not None:
            out[f"{split}_{name}_mean"] = float(stats["mean"])
            out[f"{split}_{name}_std"] = float(stats["std"] or 0.0)
    return out
