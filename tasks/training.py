"""Prefect tasks over the training engine: LR range test, fit, evaluation. Logging to MLflow
goes through ml.tracking; the ML lives in ml/."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from ml.eval.gate import heldout_digest
from ml.tracking import models as tracked_models
from ml.tracking import runs as tracking_runs
from ml.tracking import serving
from ml.train import recipes
from ml.train.config import LRFindConfig, TrainConfig
from ml.train.loop import Callback, TrainResult, fit
from tasks.common import IO_RETRY, publish_table


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


@task(name="lr-range-test", cache_policy=NO_CACHE)
def lr_range_test(
    cache, cfg: TrainConfig, out_dir: str, lr_find: LRFindConfig = LRFindConfig(), run_id: str | None = None
) -> dict[str, Any]:
    """Smith's range test on the training split; returns suggestions and the log-scale bracket."""
    res = recipes.find_lr(
        cache.subset("train"),
        cache.classes,
        cfg,
        num_iter=lr_find.num_iter,
        start_lr=lr_find.start_lr,
        end_lr=lr_find.end_lr,
        fetch_weights=tracked_models.fetch_weights,
    )
    plot = recipes.lr_finder_plot(res, out_dir)
    out = {
        "chosen": res.chosen,
        "bracket": list(res.bracket),
        "suggestions": res.suggestions,
        "stopped_early": res.stopped_early,
        "iterations": len(res.lrs),
        "plot": str(plot),
    }
    if run_id:
        client = MlflowClient()
        now = int(time.time() * 1000)
        curve = [
            Metric(name, float(v), now, i)
            for i, (lr, loss) in enumerate(zip(res.lrs, res.losses))
            for name, v in (("lr_finder_loss", loss), ("lr_finder_lr", lr))
            if math.isfinite(float(v))
        ]
        for start in range(0, len(curve), 1000):  # MLflow's batch limit
            client.log_batch(run_id, metrics=curve[start : start + 1000])
        client.log_artifact(run_id, str(plot), artifact_path="plots")
        client.log_dict(run_id, out, "reports/lr_finder.json")
    publish_table(
        "lr-find-summary",
        {"chosen": res.chosen, "bracket_lo": res.bracket[0], "bracket_hi": res.bracket[1], **res.suggestions},
    )
    return out


@task(name="train-model", cache_policy=NO_CACHE)
def train_model(cache, cfg: TrainConfig, run_id: str) -> TrainResult:
    """Fit one configuration on train/val, logging every epoch to the MLflow run."""
    logger = get_run_logger()
    epoch_logger = MlflowEpochLogger(run_id)  # flushes its queue in on_train_end
    try:
        result = fit(
            cache.subset("train"),
            cache.subset("val"),
            cache.classes,
            cfg,
            callbacks=[epoch_logger],
            fetch_weights=tracked_models.fetch_weights,
        )
    except BaseException:
        try:  # keep the rows of the epochs that did run, but report the training error
            epoch_logger.flush()
        except Exception as exc:
            logger.warning("could not write the last epoch metrics to MLflow: %s", exc)
        raise
    logger.info(
        "trained %s/%s (%s) in %.1fs: val balanced acc %.3f",
        cfg.arch,
        cfg.schedule,
        result.precision.name,
        result.wall_seconds,
        result.val_metrics["balanced_accuracy"],
    )
    return result


@task(name="evaluate-model", cache_policy=NO_CACHE)
def evaluate_model(result: TrainResult, cache, split: str) -> dict[str, Any]:
    """Metrics of the (snapshot-ensembled) model on ``split``; probabilities kept for the gate."""
    return recipes.evaluate(result, cache.subset(split), tta=result.config.get("tta"))


@task(name="log-training-run", **IO_RETRY, cache_policy=NO_CACHE)
def log_training_run(
    run_id: str,
    result: TrainResult,
    evaluation: dict,
    eval_split: str,
    cache,
    manifest,
    out_dir: str,
    extra: dict | None = None,
) -> dict[str, Any]:
    """Params, tags, dataset input, plots, classification report, held-out predictions and the
    model of one run: the served pyfunc (the evaluated snapshot ensemble with its preprocessing,
    :mod:`ml.tracking.serving`) beside the state dicts under ``model/``. The weights go to the
    store on a background thread while the plots are drawn (disk I/O beside Python-bound work).
    Returns the plots, the report and ``model_uri``, the URI :func:`register_model` takes."""
    out = Path(out_dir)
    images, labels = cache.subset(eval_split)
    meta = tracked_models.model_meta(
        result.config["arch"],
        result.classes,
        len(result.snapshots),
        {
            "norm": [list(result.norm[0]), list(result.norm[1])],
            "size": int(images.shape[1]),
            "dataset_version": cache.version,
            "tta": bool(result.config.get("tta")),
        },
    )
    with tracked_models.model_weights_in_background(
        run_id, result.model.state_dict(), result.snapshots, meta
    ) as written:
        plots = recipes.training_plots(result, out / "plots", (images, labels), evaluation["probs"])
        metrics = evaluation["metrics"]
        report = {
            "split": eval_split,
            **{k: v for k, v in metrics.items()},
            "config": result.config,
            "epochs_run": result.epochs_run,
            "wall_seconds": result.wall_seconds,
            "best_epoch": result.best_epoch,
            "snapshots": len(result.snapshots),
            **result.precision.tags(),
            **(extra or {}),
        }
        (out / "metrics.json").write_text(json.dumps(report, indent=2, default=float))
        with mlflow.start_run(run_id=run_id):
            tracking_runs.log_params({**result.config, "dataset_version": cache.version})
            tracking_runs.set_standard_tags(
                cache.version,
                tracking_runs.git_commit(),
                result.config["schedule"],
                result.config["amp"],
                result.device,
            )
            mlflow.set_tags(result.precision.tags())  # what AMP became on this machine, and why
            tracking_runs.log_dataset_input(
                cache.version, "dataset", manifest.source, manifest.records[["path", "label", "split"]]
            )
            tracking_runs.log_plots(plots.values())
            tracking_runs.log_report_json("classification_report", report)
            tracked_models.log_predictions(
                eval_split, evaluation["probs"], heldout_digest(images, labels, cache.classes)
            )
            tracked_models.log_training_digests(run_id, manifest.records, cache.version)
            # final (snapshot-ensemble) figures; on val they must not collide with the per-epoch series
            prefix = "val_final_" if eval_split == "val" else f"{eval_split}_"
            mlflow.log_metrics(
                {
                    f"{prefix}{k}": float(metrics[k])
                    for k in ("accuracy", "balanced_accuracy", "macro_f1", "auroc_macro", "loss")
                    if metrics.get(k) is not None
                }
            )
            mlflow.log_metric("wall_seconds", result.wall_seconds)
            served = serving.log_serving_model(written(), meta)
    return {
        "plots": {k: str(v) for k, v in plots.items()},
        "report": str(out / "metrics.json"),
        "model_uri": served.model_uri,
    }


@task(name="pretrain-backbone", retries=0, cache_policy=NO_CACHE)
def pretrain_backbone(cache, cfg: TrainConfig, out: str) -> dict[str, Any]:
    """:func:`ml.train.pretrain.pretrain_backbone` on the cache's train/val splits."""
    from ml.train.pretrain import pretrain_backbone as pretrain

    result = pretrain(cache.subset("train"), cache.subset("val"), cache.classes, cfg, out)
    return {
        "weights": out,
        "arch": cfg.arch,
        "val_balanced_accuracy": result.val_metrics["balanced_accuracy"],
        "epochs": result.epochs_run,
        "source_dataset_version": cache.version,
    }


@task(name="repeated-fits", cache_policy=NO_CACHE)
def repeated_fits(
    cache, cfg: TrainConfig, first_metrics: dict, repeats: int, eval_split: str, run_id: str
) -> dict[str, Any]:
    """:func:`ml.train.repeats.repeated_fits` on the cache, logged to the run and published."""
    from ml.train.repeats import repeated_fits as refit

    agg = refit(
        cache.subset("train"), cache.subset("val"), cache.subset(eval_split), cache.classes, cfg, first_metrics, repeats
    )
    client = MlflowClient()
    for name, stats in agg["metrics"].items():
        if stats["mean"] is not None:
            client.log_metric(run_id, f"{eval_split}_{name}_mean", float(stats["mean"]))
            client.log_metric(run_id, f"{eval_split}_{name}_std", float(stats["std"] or 0.0))
    client.log_dict(run_id, agg, "reports/repeated_fits.json")
    publish_table(
        "train-repeats",
        [{"confused pair": p["text"]} for p in agg["confused_pairs"][:8]] or [{"confused pair": "none"}],
        f"{repeats} fits, errors per run on {eval_split}",
    )
    return agg
