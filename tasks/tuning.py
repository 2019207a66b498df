"""Ray Tune over LR brackets x schedule variants x AMP (x architecture), with ASHA.

Each trial is a function trainable that runs :func:`ml.train.loop.fit` with three callbacks:
:class:`ml.train.cycle_score.CycleEndScore` (the validation balanced accuracy of the snapshot
ensemble the trial would hand over, at its schedule's cycle ends), one that reports every epoch
to Tune (``ray.tune.report``, with a checkpoint when one was written: every
``checkpoint_interval_s`` and after the last epoch, so an interrupted tune resumes with
``Tuner.restore``), and one that logs the epoch to an MLflow child run under the tune's run.

- LR: each schedule's LRs are drawn log-uniformly from its own bracket (one per optimiser
  family, :data:`ml.train.schedules.LR_FAMILIES`), seeded, once per sweep
  (:func:`search_space`); each trial records its ``lr_bracket``.
- Pruning: trials are ranked by :data:`SCORE` and ASHA judges them on :data:`CLOCK`, which moves
  only at a cycle end (epochs at the last cycle end + 1): with grace period 2 and reduction
  factor 2 its rungs 2, 4, 8, ... fall at epochs 1, 3, 7, ..., a cycle end of every variant, so
  no trial is judged mid-cycle or just after a warm restart, and all at the same epochs
  (:func:`asha_scheduler`).
- Budget: the sweep's epochs are rounded down to whole cycles of every schedule in it
  (:func:`sweep_epochs`), so all trials train the same epochs.
- Data: trials get the arrays through Ray's object store (:class:`TrialData`, with
  ``tune.with_parameters``), never a path on the driver's disk: they run on any node.
- Ray starts locally bound to 127.0.0.1 (:func:`start_local_ray`) unless ``RAY_ADDRESS`` is set.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from ml.settings import Settings, get_settings
from ml.storage import is_s3, split_s3

METRIC = "val_balanced_accuracy"  # each epoch's model on its own
SCORE = "val_ensemble_balanced_accuracy"  # what trials are ranked and pruned by (see CycleEndScore)
CLOCK = "rung_clock"  # ASHA's time attribute: epochs at the trial's last cycle end, + 1
SCORE_FILE = "cycle_score.npz"
REPO = Path(__file__).resolve().parents[1]


class TuneInterrupted(KeyboardInterrupt):
    """The tune was stopped (Ctrl-C) before its trials finished; Tune saved its state."""


@dataclass(frozen=True)
class TrialData:
    """What every trial trains on, handed to the trials through Ray's object store
    (``tune.with_parameters``): no trial opens a path of the driver's machine. ``source`` (the
    cache's location) and ``summary`` are only recorded, as the trial run's dataset input."""

    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray]
    classes: list[str]
    version: str
    source: str
    summary: Any  # pandas DataFrame of image counts per (split, label)

    @classmethod
    def from_cache(cls, cache) -> TrialData:
        """The train and val splits of an :class:`ml.data.cache.ImageCache`, read into memory."""
        return cls(
            cache.subset("train"),
            cache.subset("val"),
            list(cache.classes),
            cache.version,
            str(cache.path),
            cache.summary(),
        )


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
    from ml.train.schedules import VARIANTS, lr_family

    unknown = sorted(set(schedules) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown schedule(s) {unknown}; choose from {list(VARIANTS)}")
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


def storage_for(settings: Settings, experiment: str) -> tuple[str, Any]:
    """Tune's storage path (+ pyarrow filesystem for S3 with a custom endpoint)."""
    uri = settings.uri("tune", experiment)
    if not is_s3(uri):
        return str(Path(uri).resolve().parent), None
    import pyarrow.fs as pafs

    fs = pafs.S3FileSystem(
        endpoint_override=settings.s3_endpoint_url,
        region=settings.s3_region,
        scheme="http" if (settings.s3_endpoint_url or "").startswith("http:") else "https",
    )
    bucket, key = split_s3(uri)
    return f"{bucket}/{key.rsplit('/', 1)[0]}", fs


def _trainable(config: dict, data: TrialData) -> None:
    """One trial: fit with its cycle-end score, Tune reporting and an MLflow child run."""
    import mlflow
    import ray
    import torch
    from ray import tune
    from ray.tune import Checkpoint

    from ml.tracking.models import fetch_weights
    from ml.tracking.runs import epoch_metrics, flatten_config, log_dataset_input, run_name
    from ml.train.checkpoint import checkpoint_files
    from ml.train.config import TrainConfig
    from ml.train.cycle_score import CycleEndScore
    from ml.train.loop import Callback, fit
    from ml.train.precision import precision_for
    from ml.train.schedules import lr_family

    torch.set_num_threads(max(1, int(config["_cpus"])))
    # the ensemble is scored from each cycle end's validation probabilities: no snapshot weights
    # are kept in the trial (nor in its checkpoints)
    ensemble = int(config["_base"].get("snapshots", 0))
    cell = config["cell"]
    cfg = TrainConfig(
        **{
            **config["_base"],
            "snapshots": 0,
            "lr": cell["lr"],
            "schedule": cell["schedule"],
            "amp": config["amp"],
            "arch": config["arch"],
            "progress": False,
        }
    )
    score = CycleEndScore(data.val[1], ensemble)
    ckpt_dir = Path(tempfile.mkdtemp(prefix="trial-ckpt-"))
    cfg.checkpoint_dir = str(ckpt_dir)
    restored, restored_epoch = tune.get_checkpoint(), 0
    if restored is not None:
        with restored.as_directory() as d:
            for src, dst in zip(checkpoint_files(Path(d) / "last.pt"), checkpoint_files(ckpt_dir / "last.pt")):
                shutil.copy(src, dst)
            if (Path(d) / SCORE_FILE).is_file():
                score.load(Path(d) / SCORE_FILE)
        from ml.train.checkpoint import load_verified

        restored_epoch = int(load_verified(ckpt_dir / "last.pt")["epoch"])

    mlflow.set_tracking_uri(config["_tracking_uri"])
    trial = tune.get_context().get_trial_name()
    node_id = ray.get_runtime_context().get_node_id()
    precision = precision_for(cfg)  # as fit chooses it

    class Report(Callback):
        def on_epoch_end(self, epoch: int, metrics: dict, state) -> None:
            mlflow.log_metrics(
                epoch_metrics({**metrics, **({SCORE: score.value} if score.at_cycle_end else {})}), step=epoch
            )
            report = {
                **metrics,
                SCORE: metrics[METRIC] if score.value is None else score.value,
                CLOCK: score.clock,
                "cycle_end": score.at_cycle_end,
                "node_id": node_id,
                "mlflow_run_id": run.info.run_id,
            }
            if state.checkpoint_epoch != epoch:  # fit wrote no checkpoint this epoch (interval)
                tune.report(report)
                return
            with tempfile.TemporaryDirectory() as d:
                for src, dst in zip(checkpoint_files(ckpt_dir / "last.pt"), checkpoint_files(Path(d) / "last.pt")):
                    _link_or_copy(src, dst)
                score.save(Path(d) / SCORE_FILE)
                tune.report(report, checkpoint=Checkpoint.from_directory(d))

    name = run_name("trial", cfg, precision=precision.name, trial=_trial_index(trial))
    lo, hi = cell["lr_bracket"]
    earlier = _trial_run(config["_experiment_id"], config["_parent_run_id"], trial)
    if earlier is not None:  # Tune retried this trial (its node died): its MLflow run continues
        start = dict(run_id=earlier)
    else:
        start = dict(
            experiment_id=config["_experiment_id"],
            parent_run_id=config["_parent_run_id"],
            run_name=name,
            tags={
                "trial": trial,
                "schedule": cfg.schedule,
                "amp": str(cfg.amp),
                **precision.tags(),
                "dataset_version": data.version,
                "ray_node_id": node_id,
            },
        )
    with mlflow.start_run(**start) as run:
        if earlier is None:
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
            attempts = int(run.data.tags.get("trial_attempts", "1")) + 1
            mlflow.set_tags(
                {"ray_node_id": node_id, "trial_attempts": str(attempts), "restored_from_epoch": str(restored_epoch)}
            )
        try:
            fit(data.train, data.val, data.classes, cfg, callbacks=[score, Report()], fetch_weights=fetch_weights)
        except SystemExit:  # tune.report's way to end a trial the scheduler stopped (ASHA pruned it)
            mlflow.set_tag("stopped_by", "scheduler")
            mlflow.end_run("KILLED")
            raise
        finally:
            shutil.rmtree(ckpt_dir, ignore_errors=True)


def _trial_run(experiment_id: str, parent_run_id: str, trial: str) -> str | None:
    """The MLflow run an earlier attempt of ``trial`` opened under this tune's parent run (None:
    this is its first attempt). A retried trial continues that run: none is duplicated, none is
    left RUNNING by the attempt that died."""
    import mlflow

    found = mlflow.search_runs(
        [experiment_id],
        output_format="list",
        max_results=1,
        filter_string=f"tags.trial = '{trial}' and tags.`mlflow.parentRunId` = '{parent_run_id}'",
    )
    return found[0].info.run_id if found else None


def _trial_index(trial: str) -> str:
    """``_trainable_ccd60_00003`` -> ``3`` (Tune's trial names end in the trial's index); a name
    without one is kept whole."""
    tail = trial.rsplit("_", 1)[-1]
    return str(int(tail)) if tail.isdigit() else trial


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard link (free, same filesystem) or copy; fit replaces ``src`` atomically, so a link
    keeps the reported version intact."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy(src, dst)


_CLUSTERS_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextmanager
def _loopback_only() -> Iterator[None]:
    """Ray's single-machine mode while a local Ray starts. On Linux Ray turns a node address of
    127.0.0.1 into the machine's network address (clusters being enabled) and its servers then
    listen on every interface; with multi-node support off (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``,
    read by ``ray._private.ray_constants`` at import and by the processes the node starts) the
    node keeps 127.0.0.1 and every server binds it."""
    from ray._private import ray_constants

    old_env, old_flag = os.environ.get(_CLUSTERS_SWITCH), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_CLUSTERS_SWITCH], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = old_flag
        if old_env is None:
            os.environ.pop(_CLUSTERS_SWITCH, None)
        else:
            os.environ[_CLUSTERS_SWITCH] = old_env


def start_local_ray(num_cpus: int | None = None, env_vars: dict[str, str] | None = None) -> None:
    """A local one-node Ray for this process, reachable on 127.0.0.1 only (see
    :func:`_loopback_only`); its workers import this checkout (``PYTHONPATH``)."""
    import ray

    with _loopback_only():
        ray.init(
            num_cpus=num_cpus or os.cpu_count(),
            include_dashboard=False,
            ignore_reinit_error=True,
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONPATH": str(REPO), **(env_vars or {})}},
        )


def _ray_init(settings: Settings, cpus: int | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    if settings.ray_address:
        ray.init(address=settings.ray_address, ignore_reinit_error=True)
    else:
        start_local_ray(cpus)


def _logger() -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run logger inside a flow or task run, else this module's logger."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


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
    """Run (or resume) the sweep; returns the best trial's config/metrics, every trial's outcome,
    the epochs each trial trained (:func:`sweep_epochs`) and the notes of what was adjusted.
    ``bracket``: see :func:`schedule_brackets`. ``trial_resources``: custom Ray resources each
    trial asks for besides its CPUs and GPUs (e.g. ``{"worker_node": 1}``). Trials report every
    epoch but checkpoint only once ``checkpoint_interval_s`` has passed since their last
    checkpoint, and after their final epoch (0: every epoch). Raises :class:`TuneInterrupted`
    when Tune stopped on Ctrl-C before every trial finished (its state is kept for a resume)."""
    from ray import tune
    from ray.tune import CheckpointConfig, FailureConfig, RunConfig, TuneConfig

    settings = get_settings()
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
            _logger().warning(note)
    _ray_init(settings)
    trainable = tune.with_resources(tune.with_parameters(_trainable, data=data), resources)
    space = {
        **grid,
        "_base": {**base_config, "epochs": epochs, "seed": seed, "checkpoint_interval_s": checkpoint_interval_s},
        "_cpus": cpus_per_trial,
        "_tracking_uri": tracking_uri,
        "_parent_run_id": parent_run_id,
        "_experiment_id": experiment_id,
    }
    storage_path, fs = storage_for(settings, name)
    exp_path = f"{storage_path}/{name}"
    if resume and tune.Tuner.can_restore(exp_path, storage_filesystem=fs):
        tuner = tune.Tuner.restore(exp_path, trainable, resume_errored=True, storage_filesystem=fs, param_space=space)
    else:
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
                verbose=0,
            ),
        )
    results = tuner.fit()
    _raise_if_interrupted(results, name)
    return {**summarize_grid(results), "epochs": epochs, "epochs_note": epochs_note, "amp_note": amp_note}


def asha_scheduler(epochs: int):
    """ASHA on :data:`CLOCK` (epochs at the trial's last cycle end + 1, moving only at cycle
    ends): grace period 2 and reduction factor 2 put its rungs at clock 2, 4, 8, ..., i.e. epochs
    1, 3, 7, ..., a cycle end of every variant; a result between cycle ends repeats a clock
    already judged and is not judged again. Rungs lie before the last epoch (``max_t=epochs``,
    ``stop_last_trials=False``): a trial that reaches its budget ends by itself, so its MLflow
    run ends FINISHED. None (no pruning) for a one-epoch sweep."""
    from ray.tune.schedulers import ASHAScheduler

    if epochs < 2:
        return None
    return ASHAScheduler(time_attr=CLOCK, max_t=epochs, grace_period=2, reduction_factor=2, stop_last_trials=False)


def _raise_if_interrupted(grid, name: str) -> None:
    """Tune returns normally from a Ctrl-C, and marks every trial TERMINATED as it stops them. A
    trial that finished in this run, or that the scheduler stopped, has ``done`` in its last
    result; for any other (interrupted, or restored already finished) the experiment state Tune
    saved before stopping tells."""
    maybe = [r for r in grid if r.error is None and not (r.metrics or {}).get("done")]
    if not maybe:
        return
    from ray.tune import ExperimentAnalysis

    saved = ExperimentAnalysis(grid.experiment_path, storage_filesystem=grid.filesystem).trials
    unfinished = [t for t in saved if t.status not in ("TERMINATED", "ERROR")]
    if not unfinished:
        return
    message = (
        f"tune {name!r} was interrupted with {len(unfinished)} of {len(saved)} trials unfinished; its "
        f"state is saved: resume it with `skinflow tune --name {name}` and the same options"
    )
    _logger().warning(message)
    raise TuneInterrupted(message)


def _history(result) -> list[dict[str, float]]:
    """Per-epoch ``val_balanced_accuracy``, the cycle-end score and ``epoch_seconds`` a trial reported."""
    df = result.metrics_dataframe
    if df is None or df.empty or METRIC not in df or "epoch_seconds" not in df:
        return []
    scores = df[SCORE] if SCORE in df else [None] * len(df)
    return [
        {METRIC: float(a), SCORE: None if c is None else float(c), "epoch_seconds": float(b)}
        for a, c, b in zip(df[METRIC], scores, df["epoch_seconds"])
    ]


def _error_line(error: BaseException) -> str:
    """The root cause of a trial's error in one line (Ray wraps it in a long traceback)."""
    lines = [ln.strip() for ln in str(error).strip().splitlines() if ln.strip()]
    return f"{type(error).__name__}: {lines[-1] if lines else ''}"[:400]


def summarize_grid(grid) -> dict:
    """Best trial (by :data:`SCORE`) + one row per trial (errored trials are listed, not hidden)."""
    trials = []
    for r in grid:
        config = dict(r.config or {})
        cfg = {**config.pop("cell", {}), **{k: v for k, v in config.items() if not k.startswith("_")}}
        m = r.metrics or {}
        trials.append(
            {
                "trial": r.path.rsplit("/", 1)[-1] if r.path else None,
                **cfg,
                SCORE: m.get(SCORE),
                METRIC: m.get(METRIC),
                "val_macro_f1": m.get("val_macro_f1"),
                "epochs": m.get("training_iteration"),
                "mlflow_run_id": m.get("mlflow_run_id"),
                "node_id": m.get("node_id"),
                "error": None if r.error is None else _error_line(r.error),
                "history": _history(r),
            }
        )
    ok = [t for t in trials if t["error"] is None and t[SCORE] is not None]
    if not ok:
        raise RuntimeError("every Ray Tune trial failed: " + "; ".join(str(t["error"]) for t in trials))
    best = max(ok, key=lambda t: t[SCORE])
    return {"best": best, "trials": trials, "failed": [t for t in trials if t["error"]]}
