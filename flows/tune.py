"""tune: LR range test first, then Ray Tune trials over the bracket x schedules x AMP (x arch)."""

from __future__ import annotations

from pathlib import Path

from mlflow import MlflowClient
from prefect import flow, get_run_logger

from ml.train.schedules import VARIANTS
from ml.settings import get_settings
from ml.train.config import TrainConfig
from tasks.common import publish_table
from ml.tracking.runs import absolute_tracking_uri
from tasks.mlflow_tasks import close_run, open_run
from tasks.training import lr_range_test
from tasks.tuning import METRIC, run_tune


@flow(name="tune")
def tune_flow(data: str = "data/demo/synth", archs: list[str] = ("resnet18",),
              schedules: list[str] = VARIANTS, amp: list[bool] = (False, True), num_samples: int = 1,
              epochs: int = 3, size: int = 64, batch_size: int = 32, gpus_per_trial: float | None = None,
              cpus_per_trial: int = 1, seed: int = 0, lr_find_iters: int = 60, max_failures: int = 0,
              out_dir: str = "outputs/tune", name: str | None = None, lr_bracket: list[float] | None = None,
              checkpoint_interval_s: float = 30.0, prepared=None,
              parent_run_id: str | None = None) -> dict:
    """Returns ``{"best": {...}, "trials": [...], "failed": [...], "lr_find": {...}, "run_id": ...}``.
    ``lr_bracket`` skips the range test; ``prepared=(manifest, cache)`` reuses the caller's
    data (the retrain flow). Each run gets its own Tune experiment; pass the ``name`` of an
    interrupted one to resume it (``Tuner.restore``: finished trials are kept, unfinished and
    errored ones continue from their last checkpoint). Trials checkpoint once
    ``checkpoint_interval_s`` has passed since their last checkpoint and after their final
    epoch (0: every epoch; a checkpoint of resnet18 with its optimizer state is ~100 MB)."""
    from flows.train import check_request, prepare_data

    check_request(list(schedules), epochs)
    logger = get_run_logger()
    manifest, cache = prepared if prepared is not None else prepare_data(data, 1 / 6, 0.0, seed, size)
    run_id, experiment_id = open_run("skinflow-tune", f"tune-{cache.version}", parent_run_id,
                                     tags={"dataset_version": cache.version})
    try:
        finder = None
        if lr_bracket is None:
            base = TrainConfig(arch=archs[0], schedule="sgdr_dlr_clm", batch_size=batch_size, seed=seed)
            finder = lr_range_test(cache, base, str(Path(out_dir) / "plots"), lr_find_iters, run_id=run_id)
            lr_bracket = finder["bracket"]
            logger.info("LR bracket %.3g..%.3g (chosen %.3g)", *lr_bracket, finder["chosen"])
        res = run_tune(str(cache.path), tuple(lr_bracket), {"batch_size": batch_size, "snapshots": 0},
                       list(schedules), list(amp), list(archs), num_samples, epochs, run_id, experiment_id,
                       absolute_tracking_uri(get_settings().mlflow_tracking_uri), cpus_per_trial, gpus_per_trial,
                       name=name or f"tune-{cache.version}-{run_id[:8]}", max_failures=max_failures,
                       checkpoint_interval_s=checkpoint_interval_s)
    except BaseException:
        close_run(run_id, "FAILED")
        raise
    client = MlflowClient()
    best = res["best"]
    for k in ("schedule", "amp", "arch", "lr"):
        client.set_tag(run_id, f"best_{k}", str(best[k]))
    client.log_metric(run_id, f"best_{METRIC}", float(best[METRIC]))
    client.log_metric(run_id, "failed_trials", len(res["failed"]))
    client.log_dict(run_id, res, "reports/tune_trials.json")
    close_run(run_id)
    publish_table("tune-summary", [{k: t.get(k) for k in ("trial", "arch", "schedule", "amp", "lr", METRIC,
                                                          "val_macro_f1", "epochs", "error")}
                                   for t in res["trials"]], "Ray Tune trials (ASHA)")
    if res["failed"]:
        logger.warning("%d trial(s) failed: %s", len(res["failed"]), [t["error"] for t in res["failed"]])
    return {**res, "lr_find": finder, "run_id": run_id}
