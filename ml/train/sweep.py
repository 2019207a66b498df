"""Ray Tune over LR brackets x schedule variants x AMP (x architecture), with ASHA.

Each trial (:func:`ml.train.sweep_trial.run_trial`) fits one grid cell, scored at its schedule's
cycle ends, reporting every epoch to Tune and recording its run through the sweep's
:class:`~ml.train.sweep_trial.TrialRecorder` (MLflow: :class:`ml.tracking.trials.MlflowTrials`).

- LR: each schedule's LRs are drawn log-uniformly from its own bracket (one per optimiser
  family, :data:`ml.train.schedules.LR_FAMILIES`), seeded, once per sweep
  (:func:`search_space`); each trial records its ``lr_bracket``.
- Pruning: trials are ranked by :data:`SCORE` and ASHA judges them on :data:`CLOCK`, which moves
  only at a cycle end (epochs at the last cycle end + 1): with grace period 2 and reduction
  factor 2 its rungs 2, 4, 8, ... fall at epochs 1, 3, 7, ..., a cycle end of every variant, so
  no trial is judged mid-cycle or just after a warm restart, and all at the same epochs
  (:func:`asha_scheduler`). A pruned trial's run ends FINISHED, ``trial_outcome=stopped_early``.
- Budget: the sweep's epochs are rounded down to whole cycles of every schedule in it
  (:func:`sweep_epochs`), so all trials train the same epochs.
- Data: trials get the arrays through Ray's object store (:class:`TrialData`, with
  ``tune.with_parameters``), never a path on the driver's disk: they run on any node.
- Ray starts locally bound to 127.0.0.1 (:func:`ml.train.ray_runtime.start_local_ray`) unless
  ``RAY_ADDRESS`` is set; progress after each trial goes to ``on_progress``
  (:mod:`ml.train.sweep_callbacks`), and the run of a trial ASHA stopped is closed there too.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ml.settings import Settings, get_settings
from ml.train.sweep_results import Log, TuneInterrupted, _raise_if_interrupted, summarize_grid, trial_outcome
from ml.train.sweep_trial import CLOCK, METRIC, SCORE, TRIAL_SETS, TrialData, TrialRecorder, run_trial, trial_base

__all__ = [
    "CLOCK",
    "METRIC",
    "SCORE",
    "TRIAL_SETS",
    "TrialData",
    "TuneInterrupted",
    "amp_grid",
    "asha_scheduler",
    "resources_per_trial",
    "run_trial",
    "run_trials",
    "schedule_brackets",
    "search_space",
    "summarize_grid",
    "sweep_epochs",
    "trial_base",
    "trial_outcome",
]

logger = logging.getLogger(__name__)


def resources_per_trial(cpus: int = 1, gpus: float | None = None) -> dict[str, float]:
    """``{"cpu": c, "gpu": g}``: g = 1 (or the given fraction) with CUDA, else 0."""
    import torch

    if gpus is None:
        gpus = 1.0 if torch.cuda.is_available() else 0.0
    if gpus and not torch.cuda.is_available():
        raise ValueError(f"gpus_per_trial={gpus} requested but CUDA is not available")
    return {"cpu": cpus, "gpu": gpus}


def amp_grid(
    amp: list[bool], device: Any = "auto", force: bool = False, cpu_flags: Any = None, capability: str | None = None
) -> tuple[list[bool], str | None]:
    """The AMP values worth a grid cell each on ``device``: where AMP would train in fp32 anyway
    (a CPU without native bf16, see :func:`ml.train.precision.choose_precision`), AMP off and on
    are one configuration and collapse to ``[False]``. Returns the values and a note saying why
    they collapsed (None when they did not)."""
    from ml.train.precision import choose_precision, resolve_device

    values = list(amp)
    if set(values) != {False, True}:
        return values, None
    precision = choose_precision(resolve_device(device), True, force, cpu_flags, capability)
    if precision.dtype is not None:
        return values, None
    return [False], f"amp [False, True] is one configuration on this machine ({precision.reason}): one cell, amp=False"


def schedule_brackets(
    bracket: Sequence[float] | Mapping[str, Sequence[float]], schedules: Sequence[str]
) -> dict[str, tuple[float, float]]:
    """The LR bracket of each schedule: ``bracket`` is one ``(lo, hi)`` for every schedule, or a
    mapping by LR family (:data:`ml.train.schedules.LR_FAMILIES`) or by schedule."""
    from ml.train.schedules import SCHEDULES, lr_family

    unknown = sorted(set(schedules) - set(SCHEDULES))
    if unknown:
        raise ValueError(f"unknown schedule(s) {unknown}; choose from {list(SCHEDULES)}")
    if isinstance(bracket, Mapping):
        missing = [s for s in schedules if s not in bracket and lr_family(s) not in bracket]
        if missing:
            raise ValueError(f"no LR bracket for schedule(s) {missing} (given: {sorted(bracket)})")
        out = {s: tuple(bracket[s] if s in bracket else bracket[lr_family(s)]) for s in schedules}
    else:
        out = {s: tuple(bracket) for s in schedules}
    for s, b in out.items():
        if not (len(b) == 2 and 0 < b[0] < b[1] and math.isfinite(b[1])):
            raise ValueError(f"invalid LR bracket {list(b)} for {s}")
    return {s: (float(lo), float(hi)) for s, (lo, hi) in out.items()}


def search_space(
    bracket: Sequence[float] | Mapping[str, Sequence[float]],
    schedules: list[str],
    amp: list[bool],
    archs: list[str],
    device: Any = "auto",
    force: bool = False,
    cpu_flags: Any = None,
    capability: str | None = None,
    num_samples: int = 1,
    seed: int = 0,
) -> tuple[dict[str, Any], str | None]:
    """Grid over cells x AMP (see :func:`amp_grid`: no trials for an AMP cell that would train in
    fp32 anyway) x architectures. A cell is ``{"schedule", "lr", "lr_bracket"}``: ``num_samples``
    LRs per schedule, log-uniform inside its bracket (:func:`schedule_brackets`), drawn here
    with ``seed`` (the same sweep draws the same LRs; each LR is tried at every AMP setting and
    architecture). Drawn here rather than by ``tune.sample_from``, whose values Tune draws anew
    when it restores an experiment, so that a resumed trial keeps its LR. Returns the space and
    :func:`amp_grid`'s note."""
    from ray import tune

    brackets = schedule_brackets(bracket, schedules)
    rng = np.random.default_rng(seed)
    cells = [
        {"schedule": s, "lr": float(math.exp(rng.uniform(math.log(lo), math.log(hi)))), "lr_bracket": [lo, hi]}
        for s, (lo, hi) in brackets.items()
        for _ in range(num_samples)
    ]
    amp, note = amp_grid(amp, device, force, cpu_flags, capability)
    return {
        "cell": tune.grid_search(cells),
        "amp": tune.grid_search(amp),
        "arch": tune.grid_search(list(archs)),
    }, note


def sweep_epochs(schedules: Sequence[str], epochs: int) -> tuple[int, str | None]:
    """The sweep's budget: ``epochs`` rounded down to whole cycles of every schedule in it
    (:func:`ml.train.schedules.whole_cycle_epochs`), so that every trial trains the same epochs
    and ends at a cycle end; with a note when it was rounded."""
    from ml.train.schedules import whole_cycle_epochs

    used, note = min((whole_cycle_epochs(s, epochs) for s in schedules), key=lambda r: r[0])
    return used, note and f"sweep of {epochs} epochs: every trial trains {used} ({note})"


def asha_scheduler(epochs: int):
    """ASHA on :data:`CLOCK` (epochs at the trial's last cycle end + 1, moving only at cycle
    ends): grace period 2 and reduction factor 2 put its rungs at clock 2, 4, 8, ..., i.e. epochs
    1, 3, 7, ..., a cycle end of every variant; a result between cycle ends repeats a clock
    already judged and is not judged again. Rungs lie before the last epoch (``max_t=epochs``,
    ``stop_last_trials=False``): a trial that reaches its budget ends by itself, so its run
    ends ``completed``. None (no pruning) for a one-epoch sweep."""
    from ray.tune.schedulers import ASHAScheduler

    if epochs < 2:
        return None
    return ASHAScheduler(time_attr=CLOCK, max_t=epochs, grace_period=2, reduction_factor=2, stop_last_trials=False)


def run_trials(
    data: TrialData,
    bracket: Sequence[float] | Mapping[str, Sequence[float]],
    base_config: dict,
    schedules: list[str],
    amp: list[bool],
    archs: list[str],
    num_samples: int,
    epochs: int,
    recorder: TrialRecorder,
    *,
    cpus_per_trial: int = 1,
    gpus_per_trial: float | None = None,
    name: str = "tune",
    max_failures: int = 1,
    resume: bool = True,
    seed: int = 0,
    checkpoint_interval_s: float = 30.0,
    trial_resources: Mapping[str, float] | None = None,
    fetch_weights: Any = None,
    settings: Settings | None = None,
    log: Log | None = None,
    on_progress: Any = None,
) -> dict:
    """Run (or resume) the sweep; returns the best trial's config/metrics, every trial's row
    (:func:`summarize_grid`), the epochs each trial trained (:func:`sweep_epochs`) and the notes
    of what was adjusted (also logged as warnings on ``log``).

    ``bracket``: see :func:`schedule_brackets`. ``recorder``: where trials record their runs.
    ``trial_resources``: custom Ray resources each trial asks for besides its CPUs and GPUs (e.g.
    ``{"worker_node": 1}``). Trials report every epoch but checkpoint only once
    ``checkpoint_interval_s`` has passed since their last checkpoint, and after their final epoch
    (0: every epoch). ``fetch_weights`` resolves MLflow model URIs in ``base_config["weights"]``
    (:func:`ml.train.models.load_weights`). ``on_progress(done, total, best, trial)`` hears after
    each trial ends (:mod:`ml.train.sweep_callbacks`). Raises :class:`TuneInterrupted` when Tune
    stopped on Ctrl-C before every trial finished (its state is kept for a resume)."""
    from ray import tune
    from ray.tune import CheckpointConfig, FailureConfig, RunConfig, TuneConfig

    from ml.train.ray_runtime import ray_init, storage_for
    from ml.train.sweep_callbacks import CloseStoppedRuns, SweepProgress, reporting_to

    settings, log = settings or get_settings(), log or logger
    if epochs <= 0:
        raise ValueError(f"epochs must be positive, got {epochs}")
    epochs, epochs_note = sweep_epochs(schedules, epochs)
    resources = {**(trial_resources or {}), **resources_per_trial(cpus_per_trial, gpus_per_trial)}
    # the trials' device as fit resolves it (a remote Ray cluster's CPUs may differ from this one's)
    grid, amp_note = search_space(
        bracket,
        schedules,
        amp,
        archs,
        device=base_config.get("device", "auto"),
        force=bool(base_config.get("force_amp", False)),
        num_samples=num_samples,
        seed=seed,
    )
    for note in (epochs_note, amp_note):
        if note:
            log.warning(note)
    ray_init(settings)
    trainable = tune.with_resources(tune.with_parameters(run_trial, data=data, fetch_weights=fetch_weights), resources)
    space = {
        **grid,
        "_base": {**base_config, "epochs": epochs, "seed": seed, "checkpoint_interval_s": checkpoint_interval_s},
        "_cpus": cpus_per_trial,
        # in each trial's config: a restored tune's trials keep recording where they started.
        # Tune saves only plain values of a config: on restore it puts the NEW param space's objects
        # back in place of the saved ones, so the recorder's fields also travel as plain values
        "_recorder": recorder,
        "_recorder_fields": dataclasses.asdict(recorder) if dataclasses.is_dataclass(recorder) else None,
    }
    storage_path, fs = storage_for(settings, name)
    exp_path = f"{storage_path}/{name}"
    if resume and tune.Tuner.can_restore(exp_path, storage_filesystem=fs):
        tuner = tune.Tuner.restore(exp_path, trainable, resume_errored=True, storage_filesystem=fs, param_space=space)
    else:
        total = math.prod(len(grid[k]["grid_search"]) for k in ("cell", "amp", "arch"))
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=TuneConfig(metric=SCORE, mode="max", scheduler=asha_scheduler(epochs)),  # samples: cells
            run_config=RunConfig(
                name=name,
                storage_path=storage_path,
                storage_filesystem=fs,
                failure_config=FailureConfig(max_failures=max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=1),
                callbacks=[SweepProgress(name, total), CloseStoppedRuns()],
                verbose=0,
            ),
        )
    with reporting_to(name, on_progress):
        results = tuner.fit()
    _raise_if_interrupted(results, name, log)
    return {**summarize_grid(results), "epochs": epochs, "epochs_note": epochs_note, "amp_note": amp_note}
