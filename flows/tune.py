"""tune: an LR range test per optimiser family first, then Ray Tune trials over each family's
bracket x schedules x AMP (x arch)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from flows.naming import mlflow_tags, run_namer, tagged
from ml.data.config import DataConfig
from ml.project import with_project
from ml.settings import get_settings
from ml.tracking.runs import absolute_tracking_uri, run_name
from ml.tracking.trials import log_lr_brackets, log_sweep_result
from ml.train.config import LRFindConfig, SweepConfig, TrainConfig
from ml.train.schedules import lr_family
from ml.train.sweep import METRIC, SCORE, TrialData, schedule_brackets, trial_base
from tasks.common import publish_table
from tasks.mlflow_tasks import tracked_run
from tasks.training import run_lr_range_test
from tasks.tuning import run_tune


@flow(name="tune", flow_run_name=run_namer("tune"))
def tune_flow(
    data: DataConfig = DataConfig(),
    sweep: SweepConfig = SweepConfig(),
    training: TrainConfig = TrainConfig(),
    lr_find: LRFindConfig = LRFindConfig(),
    lr_bracket: list[float] | None = None,
    out_dir: str = "outputs/tune",
) -> dict:
    """Returns ``{"best": {...}, "trials": [...], "failed": [...], "lr_find": {family: {...}},
    "lr_brackets": {schedule: [lo, hi]}, "epochs": ..., "run_id": ...}``: one LR range test per
    optimiser family the sweep's schedules use (:data:`ml.train.schedules.LR_FAMILIES`: SGD with
    one LR for all groups for sgd and sgdr, SGD with discriminative LRs for the sgdr_dlr
    variants, Adam for adam), each schedule's trials drawing their LR from their family's
    bracket. A given ``lr_bracket=[lo, hi]`` skips the range tests and is every schedule's
    bracket as given (``lr_find`` is then None). Each run gets its own Tune experiment; pass the
    ``sweep.name`` of an interrupted one to resume it (``Tuner.restore``: finished trials are
    kept, unfinished and errored ones continue from their last checkpoint). Trials checkpoint
    once ``sweep.checkpoint_interval_s`` has passed since their last checkpoint and after their
    final epoch (0: every epoch)."""
    with tagged("tune"):
        data, sweep, training, lr_find = with_project(
            data, sweep, training, lr_find
        )  # the project file under what was given
        from flows.train import prepare_data

        _, cache = prepare_data(data)
        return run_sweep(cache, sweep, training, lr_find, out_dir, lr_bracket=lr_bracket)


def run_sweep(
    cache,
    sweep: SweepConfig,
    training: TrainConfig,
    lr_find: LRFindConfig,
    out_dir: str,
    parent_run_id: str | None = None,
    lr_bracket: list[float] | None = None,
) -> dict:
    """The sweep on a prepared image cache, in an MLflow run (child of ``parent_run_id``): what
    ``tune_flow`` runs, and what the retrain flow calls inside its own run."""
    logger = get_run_logger()
    with tracked_run(
        "skinflow-tune",
        run_name("tune", schedules=len(sweep.schedules), epochs=sweep.epochs, data=cache.version[:8]),
        parent_run_id,
        tags=mlflow_tags(dataset_version=cache.version),
    ) as (run_id, experiment_id):
        finders = None
        if lr_bracket is None:
            finders = _range_tests(cache, sweep, training, lr_find, out_dir, run_id)
        brackets = schedule_brackets(
            {f: r["bracket"] for f, r in finders.items()} if finders else lr_bracket, sweep.schedules
        )
        log_lr_brackets(run_id, brackets)
        base_config = trial_base(training)
        res = run_tune(
            TrialData.from_cache(cache),
            brackets,
            base_config,
            list(sweep.schedules),
            list(sweep.amp),
            list(sweep.archs),
            sweep.num_samples,
            sweep.epochs,
            run_id,
            experiment_id,
            absolute_tracking_uri(get_settings().mlflow_tracking_uri),
            sweep.cpus_per_trial,
            sweep.gpus_per_trial,
            name=sweep.name or f"tune-{cache.version}-{run_id[:8]}",
            max_failures=sweep.max_failures,
            seed=training.seed,
            checkpoint_interval_s=sweep.checkpoint_interval_s,
            trial_resources=sweep.trial_resources,
        )
        log_sweep_result(run_id, res, (SCORE, METRIC))
    publish_table(
        "tune-summary",
        [
            {
                k: t.get(k)
                for k in (
                    "trial",
                    "arch",
                    "schedule",
                    "amp",
                    "lr",
                    "lr_bracket",
                    SCORE,
                    METRIC,
                    "val_macro_f1",
                    "epochs",
                    "error",
                )
            }
            for t in res["trials"]
        ],
        "Ray Tune trials (ASHA)",
    )
    if res["failed"]:
        logger.warning("%d trial(s) failed: %s", len(res["failed"]), [t["error"] for t in res["failed"]])
    return {**res, "lr_find": finders, "lr_brackets": {s: list(b) for s, b in brackets.items()}, "run_id": run_id}


def _range_tests(
    cache, sweep: SweepConfig, training: TrainConfig, lr_find: LRFindConfig, out_dir: str, run_id: str
) -> dict[str, dict]:
    """One LR range test per optimiser family of the sweep's schedules, on the sweep's first
    architecture with the family's own optimiser, each in a child run of the tune's run (curve,
    plot and report as a train run's range test logs them). ``{family: {..., "bracket",
    "schedules", "run_id"}}``."""
    logger = get_run_logger()
    finders = {}
    for family in dict.fromkeys(lr_family(s) for s in sweep.schedules):
        schedules = [s for s in sweep.schedules if lr_family(s) == family]
        cfg = training.model_copy(update={"arch": sweep.archs[0], "schedule": schedules[0]})
        with tracked_run(
            "skinflow-tune",
            run_name("lr-find", family=family, data=cache.version[:8]),
            run_id,
            tags=mlflow_tags(dataset_version=cache.version, lr_family=family),
        ) as (child, _):
            finder = run_lr_range_test(cache, cfg, str(Path(out_dir) / "plots" / family), lr_find, run_id=child)
        finders[family] = {**finder, "schedules": schedules, "run_id": child}
        logger.info(
            "LR bracket of %s (%s): %.3g..%.3g (chosen %.3g)",
            family,
            ", ".join(schedules),
            *finder["bracket"],
            finder["chosen"],
        )
    return finders
