"""tune: LR range test first, then Ray Tune trials over the bracket x schedules x AMP (x arch)."""

from __future__ import annotations

from pathlib import Path

from mlflow import MlflowClient
from prefect import flow, get_run_logger

from ml.data.config import DataConfig
from ml.settings import get_settings
from ml.tracking.runs import absolute_tracking_uri, run_name
from ml.train.config import LRFindConfig, SweepConfig, TrainConfig
from tasks.common import publish_table
from tasks.mlflow_tasks import tracked_run
from tasks.training import lr_range_test
from tasks.tuning import METRIC, run_tune

# what every trial takes from the training config (the sweep sets lr, schedule, amp, arch, epochs)
_TRIAL_BASE = ("weights", "batch_size", "weight_decay", "lr_min", "weighted_sampler", "channels_last", "device",
               "num_workers")


@flow(name="tune")
def tune_flow(data: DataConfig = DataConfig(), sweep: SweepConfig = SweepConfig(),
              training: TrainConfig = TrainConfig(), lr_find: LRFindConfig = LRFindConfig(),
              lr_bracket: list[float] | None = None, out_dir: str = "outputs/tune") -> dict:
    """Returns ``{"best": {...}, "trials": [...], "failed": [...], "lr_find": {...}, "run_id": ...}``.
    ``lr_bracket`` skips the range test. Each run gets its own Tune experiment; pass the
    ``sweep.name`` of an interrupted one to resume it (``Tuner.restore``: finished trials are
    kept, unfinished and errored ones continue from their last checkpoint). Trials checkpoint
    once ``sweep.checkpoint_interval_s`` has passed since their last checkpoint and after their
    final epoch (0: every epoch)."""
    from flows.train import prepare_data

    _, cache = prepare_data(data)
    return run_sweep(cache, sweep, training, lr_find, out_dir, lr_bracket=lr_bracket)


def run_sweep(cache, sweep: SweepConfig, training: TrainConfig, lr_find: LRFindConfig, out_dir: str,
              parent_run_id: str | None = None, lr_bracket: list[float] | None = None) -> dict:
    """The sweep on a prepared image cache, in an MLflow run (child of ``parent_run_id``): what
    ``tune_flow`` runs, and what the retrain flow calls inside its own run."""
    logger = get_run_logger()
    with tracked_run("skinflow-tune", run_name("tune", schedules=len(sweep.schedules), epochs=sweep.epochs,
                                               data=cache.version[:8]),
                     parent_run_id, tags={"dataset_version": cache.version}) as (run_id, experiment_id):
        finder = None
        if lr_bracket is None:
            base = training.model_copy(update={"arch": sweep.archs[0], "schedule": "sgdr_dlr_clm"})
            finder = lr_range_test(cache, base, str(Path(out_dir) / "plots"), lr_find, run_id=run_id)
            lr_bracket = finder["bracket"]
            logger.info("LR bracket %.3g..%.3g (chosen %.3g)", *lr_bracket, finder["chosen"])
        base_config = {k: v for k, v in training.to_dict().items() if k in _TRIAL_BASE} | {"snapshots": 0}
        res = run_tune(str(cache.path), tuple(lr_bracket), base_config, list(sweep.schedules), list(sweep.amp),
                       list(sweep.archs), sweep.num_samples, sweep.epochs, run_id, experiment_id,
                       absolute_tracking_uri(get_settings().mlflow_tracking_uri), sweep.cpus_per_trial,
                       sweep.gpus_per_trial, name=sweep.name or f"tune-{cache.version}-{run_id[:8]}",
                       max_failures=sweep.max_failures, seed=training.seed,
                       checkpoint_interval_s=sweep.checkpoint_interval_s)
        client = MlflowClient()
        best = res["best"]
        for k in ("schedule", "amp", "arch", "lr"):
            client.set_tag(run_id, f"best_{k}", str(best[k]))
        client.log_metric(run_id, f"best_{METRIC}", float(best[METRIC]))
        client.log_metric(run_id, "failed_trials", len(res["failed"]))
        client.log_dict(run_id, res, "reports/tune_trials.json")
    publish_table("tune-summary", [{k: t.get(k) for k in ("trial", "arch", "schedule", "amp", "lr", METRIC,
                                                          "val_macro_f1", "epochs", "error")}
                                   for t in res["trials"]], "Ray Tune trials (ASHA)")
    if res["failed"]:
        logger.warning("%d trial(s) failed: %s", len(res["failed"]), [t["error"] for t in res["failed"]])
    return {**res, "lr_find": finder, "run_id": run_id}
