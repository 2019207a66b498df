"""Repeated fits: the same configuration with further seeds, aggregated with the first fit
(mean +/- std of each metric and of each confused pair's error count: the thesis's Table 4.2)."""

from __future__ import annotations

from typing import Any

from ml.eval.metrics import SCALAR_KEYS, aggregate_runs
from ml.train.batches import Arrays
from ml.train.config import TrainConfig
from ml.train.loop import fit
from ml.train.recipes import evaluate


def repeated_fits(
    train: Arrays,
    val: Arrays,
    eval_data: Arrays,
    classes: list[str],
    cfg: TrainConfig,
    first_metrics: dict[str, Any],
    repeats: int,
) -> dict[str, Any]:
    """Refit with seeds ``cfg.seed + 1 .. cfg.seed + repeats - 1`` and aggregate their metrics on
    ``eval_data`` with ``first_metrics`` (the fit with ``cfg.seed``; metrics of
    :func:`ml.train.recipes.evaluate`, so with ``loss``). Returns
    :func:`ml.eval.metrics.aggregate_runs` plus the ``seeds`` used."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    runs, seeds = [first_metrics], [cfg.seed]
    for k in range(1, repeats):
        seed_cfg = cfg.model_copy(update={"seed": cfg.seed + k, "progress": False})
        result = fit(train, val, classes, seed_cfg)
        runs.append(evaluate(result, eval_data, tta=cfg.tta)["metrics"])
        seeds.append(seed_cfg.seed)
    return {**aggregate_runs(runs, keys=(*SCALAR_KEYS, "loss")), "seeds": seeds}
