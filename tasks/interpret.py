"""Prefect tasks of the interpret flow: repeated fits, then confused pairs, class distributions,
Grad-CAM/guided-backprop galleries and the background test logged to MLflow. The ML lives in
ml/interpret/ and ml/eval/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from ml.data.subset import per_class_subset
from ml.eval.metrics import SCALAR_KEYS, aggregate_runs
from ml.interpret import errors
from ml.interpret.config import InterpretConfig
from ml.tracking import runs as tracking_runs
from ml.tracking import training as tracked_training
from ml.train import recipes
from ml.train.config import TrainConfig
from tasks.common import IO_RETRY
from tasks.robustness import fit_logged


@task(name="interpret-fit", cache_policy=NO_CACHE)
def fit_and_evaluate(cache, cfg: TrainConfig, interp: InterpretConfig, eval_split: str, run_id: str) -> dict:
    """One seed's fit (logged to the child run ``run_id``) and its metrics on ``eval_split``;
    returns ``{"result", "metrics", "pred"}``."""
    images, labels = cache.subset("train")
    keep = per_class_subset(labels, interp.train_per_class, cfg.seed)
    result = fit_logged(
        (np.asarray(images[keep]), labels[keep]),
        cache.subset("val"),
        cache.classes,
        cfg,
        run_id,
        cache.version,
        {"interpret": interp.model_dump(mode="json"), "train_images": len(keep)},
    )
    from ml.eval.trust import PredictionPolicy

    recipes.calibrate(result, cache.subset("val"), PredictionPolicy.load())  # the background test reads these
    evaluation = recipes.evaluate(result, cache.subset(eval_split), tta=cfg.tta)
    m = evaluation["metrics"]
    tracked_training.log_split_metrics(run_id, m, eval_split, SCALAR_KEYS)
    get_run_logger().info("seed %d: %s balanced accuracy %.3f", cfg.seed, eval_split, m["balanced_accuracy"])
    return {"result": result, "metrics": m, "pred": evaluation["pred"]}


@task(name="explain-errors", **IO_RETRY, cache_policy=NO_CACHE)
def explain_errors(
    fits: list[dict], cache, eval_split: str, interp: InterpretConfig, out_dir: str, run_id: str
) -> dict[str, Any]:
    """Confused pairs (mean +/- std over the fits, both directions), true vs predicted class
    distribution, a gallery per top pair and the background test on the first fit's model;
    PNGs under ``plots/``, ``reports/interpret.json``."""
    images, labels = cache.subset(eval_split)
    classes = cache.classes
    out = Path(out_dir) / "plots"
    agg = aggregate_runs([f["metrics"] for f in fits], keys=SCALAR_KEYS)
    distribution = errors.class_distribution(labels, [f["pred"] for f in fits], classes)
    plots = [errors.plot_class_distribution(distribution, out / "class_distribution.png")]
    first = fits[0]["result"]
    arch = first.config["arch"]
    layer_for = errors.cam_layer_for(arch, int(images.shape[1]), interp.min_cam_side)
    galleries = []
    for rank, pair in enumerate(agg["confused_pairs"][: interp.top_pairs], start=1):
        a, b = classes.index(pair["a"]), classes.index(pair["b"])
        gallery = errors.pair_gallery(
            first.model,
            layer_for,
            first.norm,
            images,
            labels,
            classes,
            (a, b),
            interp,
            out / f"gallery_{rank}_{pair['a']}_{pair['b']}.png",
        )
        galleries.append({**gallery, "errors_mean": pair["mean"], "errors_std": pair["std"], "text": pair["text"]})
        if gallery["png"]:
            plots.append(Path(gallery["png"]))
    temperature = first.trust.calibration.temperature if first.trust is not None else 1.0
    bg = errors.background(
        first.model, first.norm, images, labels, classes, interp, out / "background_test.png", temperature
    )
    if bg["png"]:
        plots.append(Path(bg["png"]))
    report = {
        "split": eval_split,
        "n_images": int(len(labels)),
        "seeds": [f["result"].config["seed"] for f in fits],
        "metrics": agg["metrics"],
        "confused_pairs": agg["confused_pairs"],
        "class_distribution": distribution,
        "galleries": galleries,
        "background_test": {k: v for k, v in bg.items() if k != "p_true_after"},
        "cam_layer": next((g["layer"] for g in galleries if g.get("layer")), None),
    }
    metrics = tracked_training.mean_std_metrics(agg["metrics"], eval_split)
    if bg["change_rate"] is not None:
        metrics[f"{eval_split}_background_change_rate"] = bg["change_rate"]
        metrics[f"{eval_split}_background_prob_drop"] = bg["prob_drop"]
    logged = tracking_runs.log_run_report(run_id, "interpret", report, plots, metrics)
    return {**report, "plots": logged, "report": "reports/interpret.json"}
