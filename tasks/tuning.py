"""The sweep as a Prefect task: :func:`ml.train.sweep.run_trials` (Ray Tune over LR brackets x
schedules x AMP (x arch), with ASHA) with the trials as MLflow child runs of the tune's run
(:class:`ml.tracking.trials.MlflowTrials`), its notes and progress in the run's log."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from prefect import task
from prefect.cache_policies import NO_CACHE

from ml.tracking.models import fetch_weights
from ml.tracking.trials import MlflowTrials
from ml.train.sweep import TrialData, run_trials
from tasks.common import run_logger


@task(name="ray-tune", cache_policy=NO_CACHE)
def run_tune(
    data: TrialData,
    bracket: Sequence[float] | Mapping[str, Sequence[float]],
    base_config: dict,
    schedules: list[str],
    amp: list[bool],
    archs: list[str],
    num_samples: int,
    epochs: int,
    parent_run_id: str,
    experiment_id: str,
    tracking_uri: str,
    cpus_per_trial: int = 1,
    gpus_per_trial: float | None = None,
    name: str = "tune",
    max_failures: int = 1,
    resume: bool = True,
    seed: int = 0,
    checkpoint_interval_s: float = 30.0,
    trial_resources: Mapping[str, float] | None = None,
) -> dict:
    """Run (or resume) the sweep (:func:`ml.train.sweep.run_trials`), its trials recorded under
    ``parent_run_id``; returns its summary. Raises
    :class:`ml.train.sweep_results.TuneInterrupted` on Ctrl-C before every trial finished."""
    from ml.train.sweep_callbacks import progress_line

    log = run_logger()
    return run_trials(
        data,
        bracket,
        base_config,
        schedules,
        amp,
        archs,
        num_samples,
        epochs,
        MlflowTrials(tracking_uri, experiment_id, parent_run_id),
        cpus_per_trial=cpus_per_trial,
        gpus_per_trial=gpus_per_trial,
        name=name,
        max_failures=max_failures,
        resume=resume,
        seed=seed,
        checkpoint_interval_s=checkpoint_interval_s,
        trial_resources=trial_resources,
        fetch_weights=fetch_weights,
        log=log,
        on_progress=lambda done, total, best, trial: log.info(progress_line(done, total, best, trial)),
    )
