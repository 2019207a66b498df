"""Prefect tasks of the robustness flow: fit one model of the ablation and score its rows, and
log the table and figures. The ML lives in ml/robust/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from ml.robust import ablation
from ml.robust.config import Corruption, RobustnessConfig
from ml.tracking import models as tracked_models
from ml.tracking import runs as tracking_runs
from ml.tracking import training as tracked_training
from ml.train.batches import Arrays
from ml.train.config import TrainConfig
from ml.train.loop import TrainResult, fit
from tasks.common import IO_RETRY
from tasks.training import MlflowEpochLogger


def fit_logged(
    train: Arrays,
    val: Arrays,
    classes: list[str],
    cfg: TrainConfig,
    run_id: str,
    dataset_version: str,
    extra_params: dict[str, Any],
) -> TrainResult:
    """``fit`` with every epoch logged to ``run_id``, and the run's params and standard tags."""
    epoch_logger = MlflowEpochLogger(run_id)
    try:
        result = fit(train, val, classes, cfg, callbacks=[epoch_logger], fetch_weights=tracked_models.fetch_weights)
    except BaseException:
        epoch_logger.flush()
        raise
    tracked_training.log_fit_result(run_id, result, dataset_version, extra_params)
    return result


@task(name="robustness-fit", cache_policy=NO_CACHE)
def fit_and_score(
    cache, cfg: TrainConfig, rob: RobustnessConfig, train_c: Corruption, eval_split: str, run_id: str
) -> list[dict[str, Any]]:
    """Train under ``train_c`` (train and val corrupted alike), score the model's rows of the
    ablation on ``eval_split`` and log their figures to the child run ``run_id``."""
    train = ablation.corrupted_split(ablation.training_split(cache.subset("train"), rob), train_c, rob, "train")
    val = ablation.corrupted_split(cache.subset("val"), train_c, rob, "val")
    result = fit_logged(
        train,
        val,
        cache.classes,
        cfg,
        run_id,
        cache.version,
        {
            "robustness": rob.model_dump(mode="json"),
            "train_corruption": train_c.model_dump(mode="json"),
            "train_images": len(train[1]),
        },
    )
    rows = ablation.score_rows(result.predict_proba, cache.subset(eval_split), cache.classes, train_c, rob)
    for row in rows:
        row["run_id"] = run_id
    tracking_runs.log_run_metrics(
        run_id,
        {
            ablation.metric_key(row, metric, eval_split): row[metric]
            for row in rows
            for metric in ("top1", "balanced_accuracy", "macro_f1")
        },
    )
    tracking_runs.set_run_tags(run_id, {"train_status": rows[0]["train_status"]})
    get_run_logger().info(
        "trained %s in %.1fs: %s",
        rows[0]["train_status"],
        result.wall_seconds,
        ", ".join(f"{r['test_status']} {r['top1']:.3f}" for r in rows),
    )
    return rows


@task(name="log-robustness", **IO_RETRY, cache_policy=NO_CACHE)
def log_robustness(
    run_id: str, rows: list[dict[str, Any]], classes: list[str], eval_split: str, out_dir: str
) -> dict[str, Any]:
    """The parent run's table (JSON), accuracy-vs-noise plot, and the blur tests' confusion
    matrices with their difference from clean (PNGs under ``plots/``)."""
    from ml.eval.plots import plot_confusion

    out = Path(out_dir) / "plots"
    plots = [ablation.plot_noise_curves(rows, out / "accuracy_vs_noise.png")]
    clean = next(r for r in rows if r["setting"] == ablation.SETTINGS[0])
    plots.append(plot_confusion(clean["confusion_matrix"], classes, out / "confusion_clean.png"))
    for row in (r for r in rows if r["setting"] == ablation.SETTINGS[4]):
        tag = ablation.metric_key(row, "top1", "x").removeprefix("x_top1_")
        plots.append(plot_confusion(row["confusion_matrix"], classes, out / f"confusion_{tag}.png"))
        plots.append(
            ablation.plot_confusion_difference(
                row["confusion_matrix"],
                clean["confusion_matrix"],
                classes,
                out / f"confusion_{tag}_minus_clean.png",
                f"{row['test_status']} minus clean (counts)",
            )
        )
    report = {"split": eval_split, "table": ablation.table(rows), "rows": rows, "curves": ablation.noise_curves(rows)}
    logged = tracking_runs.log_run_report(
        run_id, "robustness", report, plots, {f"{eval_split}_top1_clean": clean["top1"]}
    )
    return {"plots": logged, "report": "reports/robustness.json", "table": report["table"]}
