"""Prefect tasks over the training engine: LR range test, fit, evaluation. Logging to MLflow
goes through ml.tracking; the ML lives in ml/."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE, TASK_SOURCE, CachePolicy

from ml.tracking import models as tracked_models
from ml.tracking import training as tracked_training
from ml.tracking.training import MlflowEpochLogger
from ml.train import recipes
from ml.train.config import LRFindConfig, TrainConfig
from ml.train.loop import TrainResult, fit
from ml.train.lr_finder import LRFinderResult
from tasks.common import IO_RETRY, publish_table, run_logger


@dataclass
class RangeTestKey(CachePolicy):
    """Prefect cache policy of a range test: :func:`ml.train.recipes.range_test_key` (the training
    images, the settings the test runs with, the ramp and the ml/train code), so a stored result
    answers only for the same test."""

    def compute_key(self, task_ctx, inputs: dict, flow_parameters: dict, **kwargs) -> str | None:
        return "lr-range-" + recipes.range_test_key(inputs["cache"], inputs["cfg"], inputs["lr_find"])


# + TASK_SOURCE: a stored result answers only to the task that wrote it (the shape it returns)
@task(name="measure-lr-range", cache_policy=RangeTestKey() + TASK_SOURCE, persist_result=True)
def measure_lr_range(cache, cfg: TrainConfig, lr_find: LRFindConfig) -> dict[str, Any]:
    """Smith's range test (:func:`ml.train.recipes.find_lr`) on the cache's training split, stored
    under its :class:`RangeTestKey`; returns its curve, suggestions and bracket, and when it ran."""
    res = recipes.find_lr(
        cache.subset("train"),
        cache.classes,
        cfg,
        num_iter=lr_find.num_iter,
        start_lr=lr_find.start_lr,
        end_lr=lr_find.end_lr,
        fetch_weights=tracked_models.fetch_weights,
    )
    return {"result": res, "measured_at": time.time()}


@task(name="lr-range-test", cache_policy=NO_CACHE)
def run_lr_range_test(
    cache, cfg: TrainConfig, out_dir: str, lr_find: LRFindConfig = LRFindConfig(), run_id: str | None = None
) -> dict[str, Any]:
    """The range test's result (measured, or the stored one of the same test when
    ``lr_find.reuse``; measured and stored again otherwise), its plot in ``out_dir``, its curve in
    run ``run_id`` when given and the ``lr-find-summary`` artifact; returns the chosen LR, the
    suggestions, the log-scale bracket and whether it was reused (and from when)."""
    asked = time.time()
    measure = measure_lr_range if lr_find.reuse else measure_lr_range.with_options(refresh_cache=True)
    found = measure(cache, cfg, lr_find)
    res: LRFinderResult = found["result"]
    reused = found["measured_at"] < asked
    plot = recipes.lr_finder_plot(res, out_dir)
    out = {
        "chosen": res.chosen,
        "bracket": list(res.bracket),
        "suggestions": res.suggestions,
        "stopped_early": res.stopped_early,
        "descended": res.descended,
        "iterations": len(res.lrs),
        "plot": str(plot),
        "reused": reused,
        "measured_at": datetime.fromtimestamp(found["measured_at"], UTC).isoformat(timespec="seconds"),
    }
    if reused:
        get_run_logger().info(
            "LR range test: reusing the one measured at %s on the same images, model and settings "
            "(lr_find.reuse; --fresh-lr-test measures again)",
            out["measured_at"],
        )
    if not res.descended:
        get_run_logger().warning(
            "LR range test: no LR in %g..%g lowered the loss; the chosen %g will not train "
            "(see %s; set the LR yourself or check the weights and data)",
            res.lrs[0],
            res.lrs[-1],
            res.chosen,
            plot,
        )
    if run_id:
        tracked_training.log_lr_finder(run_id, res.lrs, res.losses, plot, out)
    publish_table(
        "lr-find-summary",
        {
            "chosen": res.chosen,
            "bracket_lo": res.bracket[0],
            "bracket_hi": res.bracket[1],
            **res.suggestions,
            "reused": reused,
            "measured_at": out["measured_at"],
        },
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


@task(name="calibrate-model", cache_policy=NO_CACHE)
def calibrate_model(result: TrainResult, cache, out_dir: str, policy_path: str | None = None) -> TrainResult:
    """Temperature, conformal sets and refer rule fitted on the validation split
    (:func:`ml.train.recipes.calibrate`, ``policies/prediction.yaml``); the result predicts
    calibrated probabilities from here on, and its model stores them."""
    from ml.eval.trust import PredictionPolicy

    figures = recipes.calibrate(
        result, cache.subset("val"), PredictionPolicy.load(policy_path), Path(out_dir) / "plots"
    )
    run_logger().info(
        "calibrated on %d validation images: temperature %.3f, ECE %.3f -> %.3f",
        result.trust.calibration.n_images,
        figures["temperature"],
        figures["val_ece"],
        figures["val_ece_calibrated"],
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
    :mod:`ml.tracking.serving`) beside the state dicts under ``model/``, then the final metrics
    linked to that model and the evaluated split (:func:`ml.tracking.training.log_training`).
    The weights go to the store on a background thread while the plots are drawn (disk I/O
    beside Python-bound work). Returns the plots, the report and ``model_uri``, the URI
    :func:`register_model` takes."""
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
            **({"trust": result.trust.to_meta()} if result.trust is not None else {}),
        },
    )
    with tracked_models.model_weights_in_background(
        run_id, result.model.state_dict(), result.snapshots, meta
    ) as written:
        plots = recipes.training_plots(result, out / "plots", (images, labels), evaluation["probs"])
        if result.trust is not None and (out / "plots" / "reliability.png").exists():
            plots["reliability"] = out / "plots" / "reliability.png"  # drawn by calibrate_model
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
            **({"calibration": result.trust.calibration.to_dict()} if result.trust is not None else {}),
            **(extra or {}),
        }
        (out / "metrics.json").write_text(json.dumps(report, indent=2, default=float))
        served = tracked_training.log_training(
            run_id, result, evaluation, eval_split, cache, manifest, plots.values(), report, written, meta
        )
    return {
        "plots": {k: str(v) for k, v in plots.items()},
        "report": str(out / "metrics.json"),
        "model_uri": served.model_uri,
    }


@task(name="pretrain-backbone", retries=0, cache_policy=NO_CACHE)
def pretrain_and_store_backbone(cache, cfg: TrainConfig, out: str) -> dict[str, Any]:
    """Pretrain a backbone on the cache's train/val splits and store it at ``out``
    (:func:`ml.train.pretrain.pretrain_backbone`); returns where it is and how it scored."""
    from ml.train.pretrain import pretrain_backbone

    result = pretrain_backbone(cache.subset("train"), cache.subset("val"), cache.classes, cfg, out)
    return {
        "weights": out,
        "arch": cfg.arch,
        "val_balanced_accuracy": result.val_metrics["balanced_accuracy"],
        "epochs": result.epochs_run,
        "source_dataset_version": cache.version,
    }


@task(name="repeated-fits", cache_policy=NO_CACHE)
def run_repeated_fits(
    cache, cfg: TrainConfig, first_metrics: dict, repeats: int, eval_split: str, run_id: str
) -> dict[str, Any]:
    """:func:`ml.train.repeats.repeated_fits` on the cache, logged to the run and published."""
    from ml.train.repeats import repeated_fits

    agg = repeated_fits(
        cache.subset("train"), cache.subset("val"), cache.subset(eval_split), cache.classes, cfg, first_metrics, repeats
    )
    tracked_training.log_repeated_fits(run_id, agg, eval_split)
    publish_table(
        "train-repeats",
        [{"confused pair": p["text"]} for p in agg["confused_pairs"][:8]] or [{"confused pair": "none"}],
        f"{repeats} fits, errors per run on {eval_split}",
    )
    return agg
