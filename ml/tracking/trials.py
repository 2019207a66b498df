"""Ray Tune trials as MLflow child runs of the tune's run: the :class:`ml.train.sweep_trial.TrialRecorder`
the sweep's trials record through (:func:`ml.train.sweep.run_trials`).

A trial's run is named by :func:`ml.tracking.runs.run_name` (``... #<trial index> [trial]``),
tagged with its Ray trial name, schedule, AMP, precision, dataset version and Ray node, logs the
training config as params and the dataset as its input, and one row of metrics per epoch. A trial
Tune retries (its node died) continues the run its earlier attempt opened (``trial_attempts``,
``restored_from_epoch``). Every trial's run ends with a ``trial_outcome`` tag: ``completed``
and ``stopped_early`` (with ``stopped_by``: ``scheduler`` for ASHA) end FINISHED (a pruned
trial is a normal result of the sweep, not a failure), ``error`` ends FAILED. Tune may end the
process of a trial ASHA stopped before the trial has ended its run; the driver then ends it
(:meth:`MlflowTrials.close`).

A trial's run samples system metrics (``system/cpu_utilization_percentage``, memory, disk,
network; every :data:`ml.tracking.runs.SYSTEM_METRICS_INTERVAL_S` seconds) from the trial's own
process, so that trials on different nodes each show their machine's load.

The tune's own run records the sweep's brackets (:func:`log_lr_brackets`) and its outcome
(:func:`log_sweep_result`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import mlflow
from mlflow.entities import RunTag

from ml.tracking.runs import epoch_metrics, flatten_config, log_dataset_input, run_name, system_metrics_enabled
from ml.train.config import TrainConfig
from ml.train.precision import Precision
from ml.train.schedules import lr_family
from ml.train.sweep_trial import COMPLETED, OUTCOMES, STOPPED_EARLY, TrialData, trial_index

_FINISHED_OUTCOMES = (COMPLETED, STOPPED_EARLY)


@dataclass(frozen=True)
class MlflowTrials:
    """Trials' runs under ``parent_run_id`` in ``experiment_id`` of the store at ``tracking_uri``
    (absolute: trials run in other processes and on other nodes)."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str

    def start(
        self,
        *,
        trial: str,
        cfg: TrainConfig,
        precision: Precision,
        lr_bracket: tuple[float, float],
        ensemble: int,
        data: TrialData,
        node_id: str,
        restored_epoch: int,
    ) -> MlflowTrialRun:
        """Open (or continue) the run of ``trial``; it is this thread's active MLflow run until
        :meth:`MlflowTrialRun.end`."""
        mlflow.set_tracking_uri(self.tracking_uri)
        earlier = self.earlier_run(trial)
        sample = system_metrics_enabled()  # in this trial's process: its interval, its machine
        if earlier is not None:  # Tune retried this trial (its node died): its MLflow run continues
            active = mlflow.start_run(run_id=earlier, log_system_metrics=sample)
        else:
            active = mlflow.start_run(
                log_system_metrics=sample,
                experiment_id=self.experiment_id,
                parent_run_id=self.parent_run_id,
                run_name=run_name("trial", cfg, precision=precision.name, trial=trial_index(trial)),
                tags={
                    "trial": trial,
                    "schedule": cfg.schedule,
                    "amp": str(cfg.amp),
                    **precision.tags(),
                    "dataset_version": data.version,
                    "ray_node_id": node_id,
                },
            )
        try:
            if earlier is None:
                lo, hi = lr_bracket
                mlflow.log_params(
                    {
                        **flatten_config(cfg.to_dict()),
                        "lr_family": lr_family(cfg.schedule),
                        "lr_bracket_lo": lo,
                        "lr_bracket_hi": hi,
                        "ensemble_snapshots": ensemble,
                    }
                )
                log_dataset_input(data.version, "dataset", data.source, data.summary)
            else:
                attempts = int(active.data.tags.get("trial_attempts", "1")) + 1
                mlflow.set_tags(
                    {
                        "ray_node_id": node_id,
                        "trial_attempts": str(attempts),
                        "restored_from_epoch": str(restored_epoch),
                    }
                )
        except BaseException:
            mlflow.end_run("FAILED")
            raise
        return MlflowTrialRun(active.info.run_id)

    def close(self, run_id: str, outcome: str, stopped_by: str | None = None) -> None:
        """End trial run ``run_id`` from outside its trial (the driver) if it is still RUNNING:
        Tune ends a trial ASHA stopped by stopping its actor, and the trial's process may go
        before :meth:`MlflowTrialRun.end` has run. Tags and status as :meth:`MlflowTrialRun.end`."""
        client = mlflow.MlflowClient(self.tracking_uri)
        if client.get_run(run_id).info.status != "RUNNING":
            return
        _end(client, run_id, outcome, stopped_by, active=False)

    def earlier_run(self, trial: str) -> str | None:
        """The MLflow run an earlier attempt of ``trial`` opened under this tune's parent run (None:
        this is its first attempt). A retried trial continues that run: none is duplicated, none is
        left RUNNING by the attempt that died."""
        found = mlflow.search_runs(
            [self.experiment_id],
            output_format="list",
            max_results=1,
            filter_string=f"tags.trial = '{trial}' and tags.`mlflow.parentRunId` = '{self.parent_run_id}'",
        )
        return found[0].info.run_id if found else None


@dataclass(frozen=True)
class MlflowTrialRun:
    """A trial's open MLflow run (the active run of the trial's thread)."""

    run_id: str

    def log_epoch(self, metrics: dict[str, float | None], epoch: int) -> None:
        mlflow.log_metrics(epoch_metrics(metrics), step=epoch, run_id=self.run_id)

    def end(self, outcome: str | None, stopped_by: str | None = None) -> None:
        """Tag ``trial_outcome`` (and ``stopped_by``) and end the run: FINISHED for ``completed``
        and ``stopped_early``, FAILED for ``error`` or None (no outcome tag then)."""
        _end(mlflow.MlflowClient(), self.run_id, outcome, stopped_by, active=True)


def _end(client: mlflow.MlflowClient, run_id: str, outcome: str | None, stopped_by: str | None, active: bool) -> None:
    """Tag and end ``run_id``; ``active``: it is this thread's active run (ended as such)."""
    tags = {"trial_outcome": outcome, "stopped_by": stopped_by}
    status = "FINISHED" if outcome in _FINISHED_OUTCOMES else "FAILED"
    try:
        if outcome is not None and outcome not in OUTCOMES:
            raise ValueError(f"unknown trial outcome {outcome!r}; one of {OUTCOMES}")
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items() if v is not None])
    finally:
        current = mlflow.active_run() if active else None
        if current is not None and current.info.run_id == run_id:
            mlflow.end_run(status)
        else:
            client.set_terminated(run_id, status)


def log_lr_brackets(run_id: str, brackets: Mapping[str, tuple[float, float]]) -> dict[str, str]:
    """The sweep's LR bracket of each schedule as params of the tune's run ``run_id``:
    ``lr_bracket_<schedule>`` = ``<lo>..<hi>`` (4 significant digits). Returns what was logged."""
    client = mlflow.MlflowClient()
    params = {f"lr_bracket_{schedule}": f"{lo:.4g}..{hi:.4g}" for schedule, (lo, hi) in brackets.items()}
    for key, value in params.items():
        client.log_param(run_id, key, value)
    return params


def log_sweep_result(run_id: str, result: Mapping[str, Any], metrics: Sequence[str]) -> None:
    """The sweep's outcome in the tune's run ``run_id``: tags ``best_schedule``, ``best_amp``,
    ``best_arch``, ``best_lr`` of the best trial, metrics ``best_<metric>`` of each of its
    ``metrics`` and ``failed_trials``, and the whole ``result`` (``best``, ``trials``,
    ``failed``, ...) as ``reports/tune_trials.json``."""
    client = mlflow.MlflowClient()
    best = result["best"]
    for k in ("schedule", "amp", "arch", "lr"):
        client.set_tag(run_id, f"best_{k}", str(best[k]))
    for metric in metrics:
        client.log_metric(run_id, f"best_{metric}", float(best[metric]))
    client.log_metric(run_id, "failed_trials", len(result["failed"]))
    client.log_dict(run_id, result, "reports/tune_trials.json")
