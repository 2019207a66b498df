"""Ray Tune over the LR bracket x schedule variants x AMP (x architecture), with ASHA.

Each trial is a function trainable that runs :func:`ml.train.loop.fit` with two callbacks: one
reports every epoch to Tune (``ray.tune.report``, with a checkpoint when one was written:
every ``checkpoint_interval_s`` and after the last epoch, so an interrupted tune resumes with
``Tuner.restore``), one logs the epoch to an MLflow child
run under the tune's parent run. Ray starts locally unless ``RAY_ADDRESS`` is set.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from ml.settings import Settings, get_settings
from ml.storage import is_s3, split_s3

METRIC = "val_balanced_accuracy"


def resources_per_trial(cpus: int = 1, gpus: float | None = None) -> dict[str, float]:
    """``{"cpu": c, "gpu": g}``: g = 1 (or the given fraction) with CUDA, else 0."""
    import torch

    if gpus is None:
        gpus = 1.0 if torch.cuda.is_available() else 0.0
    if gpus and not torch.cuda.is_available():
        raise ValueError(f"gpus_per_trial={gpus} requested but CUDA is not available")
    return {"cpu": cpus, "gpu": gpus}


def amp_grid(amp: list[bool], device: Any = "auto", force: bool = False, cpu_flags: Any = None,
             capability: str | None = None) -> tuple[list[bool], str | None]:
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


def search_space(bracket: tuple[float, float], schedules: list[str], amp: list[bool], archs: list[str],
                 device: Any = "auto", force: bool = False, cpu_flags: Any = None,
                 capability: str | None = None) -> tuple[dict[str, Any], str | None]:
    """Log-uniform LR inside the bracket; grid over schedules, AMP (see :func:`amp_grid`: no
    trials for an AMP cell that would train in fp32 anyway) and architectures. Returns the space
    and :func:`amp_grid`'s note."""
    from ray import tune

    from ml.train.schedules import VARIANTS

    unknown = sorted(set(schedules) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown schedule(s) {unknown}; choose from {list(VARIANTS)}")
    lo, hi = bracket
    if not (0 < lo < hi and math.isfinite(hi)):
        raise ValueError(f"invalid LR bracket {bracket}")
    amp, note = amp_grid(amp, device, force, cpu_flags, capability)
    return {
        "lr": tune.loguniform(lo, hi),
        "schedule": tune.grid_search(list(schedules)),
        "amp": tune.grid_search(amp),
        "arch": tune.grid_search(list(archs)),
    }, note


def storage_for(settings: Settings, experiment: str) -> tuple[str, Any]:
    """Tune's storage path (+ pyarrow filesystem for S3 with a custom endpoint)."""
    uri = settings.uri("tune", experiment)
    if not is_s3(uri):
        return str(Path(uri).resolve().parent), None
    import pyarrow.fs as pafs

    fs = pafs.S3FileSystem(endpoint_override=settings.s3_endpoint_url, region=settings.s3_region,
                           scheme="http" if (settings.s3_endpoint_url or "").startswith("http:") else "https")
    bucket, key = split_s3(uri)
    return f"{bucket}/{key.rsplit('/', 1)[0]}", fs


def _trainable(config: dict) -> None:
    """One trial: fit with Tune reporting and an MLflow child run."""
    import mlflow
    import torch
    from ray import tune
    from ray.tune import Checkpoint

    from ml.data.cache import ImageCache
    from ml.train.config import TrainConfig
    from ml.train.loop import Callback, fit
    from ml.tracking.models import fetch_weights
    from ml.tracking.runs import epoch_metrics, flatten_config, log_dataset_input, run_name
    from ml.train.precision import choose_precision, resolve_device

    torch.set_num_threads(max(1, int(config["_cpus"])))
    cache = ImageCache.open(config["_cache_dir"])
    cfg = TrainConfig(**{**config["_base"], "lr": config["lr"], "schedule": config["schedule"],
                         "amp": config["amp"], "arch": config["arch"], "progress": False})
    ckpt_dir = Path(tempfile.mkdtemp(prefix="trial-ckpt-"))
    cfg.checkpoint_dir = str(ckpt_dir)
    restored = tune.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            shutil.copy(Path(d) / "last.pt", ckpt_dir / "last.pt")

    mlflow.set_tracking_uri(config["_tracking_uri"])
    trial = tune.get_context().get_trial_name()
    precision = choose_precision(resolve_device(cfg.device), cfg.amp, cfg.force_amp)  # as fit chooses it

    class Report(Callback):
        def on_epoch_end(self, epoch: int, metrics: dict, state) -> None:
            mlflow.log_metrics(epoch_metrics(metrics), step=epoch)
            report = {**metrics, "mlflow_run_id": run.info.run_id}
            if state.checkpoint_epoch != epoch:  # fit wrote no checkpoint this epoch (interval)
                tune.report(report)
                return
            with tempfile.TemporaryDirectory() as d:
                _link_or_copy(ckpt_dir / "last.pt", Path(d) / "last.pt")
                tune.report(report, checkpoint=Checkpoint.from_directory(d))

    name = run_name("trial", cfg, precision=precision.name, trial=_trial_index(trial))
    with mlflow.start_run(experiment_id=config["_experiment_id"], parent_run_id=config["_parent_run_id"],
                          run_name=name, tags={"trial": trial, "schedule": cfg.schedule, "amp": str(cfg.amp),
                                               **precision.tags(), "dataset_version": cache.version}) as run:
        mlflow.log_params(flatten_config(cfg.to_dict()))
        log_dataset_input(cache.version, "dataset", str(cache.path), cache.summary())
        train, val = cache.subset("train"), cache.subset("val")
        try:
            fit(train, val, cache.classes, cfg, callbacks=[Report()], fetch_weights=fetch_weights)
        finally:
            shutil.rmtree(ckpt_dir, ignore_errors=True)


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


def _ray_init(settings: Settings, cpus: int | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    if settings.ray_address:
        ray.init(address=settings.ray_address, ignore_reinit_error=True)
    else:
        ray.init(num_cpus=cpus or os.cpu_count(), include_dashboard=False, ignore_reinit_error=True,
                 runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}},
                 log_to_driver=False)


@task(name="ray-tune", cache_policy=NO_CACHE)
def run_tune(cache_dir: str, bracket: tuple[float, float], base_config: dict, schedules: list[str],
             amp: list[bool], archs: list[str], num_samples: int, epochs: int, parent_run_id: str,
             experiment_id: str, tracking_uri: str, cpus_per_trial: int = 1, gpus_per_trial: float | None = None,
             name: str = "tune", max_failures: int = 0, resume: bool = True, seed: int = 0,
             checkpoint_interval_s: float = 30.0) -> dict:
    """Run (or resume) the sweep; returns the best trial's config/metrics and every trial's outcome.
    Trials report every epoch but checkpoint only once ``checkpoint_interval_s`` has passed
    since their last checkpoint, and after their final epoch (0: every epoch)."""
    from prefect import get_run_logger
    from ray import tune
    from ray.tune import CheckpointConfig, FailureConfig, RunConfig, TuneConfig
    from ray.tune.schedulers import ASHAScheduler

    settings = get_settings()
    if epochs <= 0:
        raise ValueError(f"epochs must be positive, got {epochs}")
    resources = resources_per_trial(cpus_per_trial, gpus_per_trial)
    # the trials' device as fit resolves it (a remote Ray cluster's CPUs may differ from this one's)
    grid, amp_note = search_space(bracket, schedules, amp, archs, device=base_config.get("device", "auto"),
                                  force=bool(base_config.get("force_amp", False)))
    if amp_note:
        get_run_logger().warning(amp_note)
    _ray_init(settings)
    trainable = tune.with_resources(_trainable, resources)
    space = {
        **grid,
        "_base": {**base_config, "epochs": epochs, "seed": seed, "checkpoint_interval_s": checkpoint_interval_s},
        "_cache_dir": cache_dir, "_cpus": cpus_per_trial, "_tracking_uri": tracking_uri,
        "_parent_run_id": parent_run_id, "_experiment_id": experiment_id,
    }
    storage_path, fs = storage_for(settings, name)
    exp_path = f"{storage_path}/{name}" if fs is None else f"{storage_path}/{name}"
    if resume and tune.Tuner.can_restore(exp_path, storage_filesystem=fs):
        tuner = tune.Tuner.restore(exp_path, trainable, resume_errored=True, storage_filesystem=fs,
                                   param_space=space)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=TuneConfig(
                metric=METRIC, mode="max", num_samples=num_samples,
                scheduler=ASHAScheduler(time_attr="training_iteration", max_t=epochs, grace_period=1,
                                        reduction_factor=2),
            ),
            run_config=RunConfig(name=name, storage_path=storage_path, storage_filesystem=fs,
                                 failure_config=FailureConfig(max_failures=max_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=1), verbose=0),
        )
    return {**summarize_grid(tuner.fit()), "amp_note": amp_note}


def _history(result) -> list[dict[str, float]]:
    """Per-epoch ``val_balanced_accuracy`` and ``epoch_seconds`` a trial reported."""
    df = result.metrics_dataframe
    if df is None or df.empty or METRIC not in df or "epoch_seconds" not in df:
        return []
    return [{METRIC: float(a), "epoch_seconds": float(b)} for a, b in zip(df[METRIC], df["epoch_seconds"])]


def _error_line(error: BaseException) -> str:
    """The root cause of a trial's error in one line (Ray wraps it in a long traceback)."""
    lines = [ln.strip() for ln in str(error).strip().splitlines() if ln.strip()]
    return f"{type(error).__name__}: {lines[-1] if lines else ''}"[:400]


def summarize_grid(grid) -> dict:
    """Best trial + one row per trial (errored trials are listed, not hidden)."""
    trials = []
    for r in grid:
        cfg = {k: v for k, v in (r.config or {}).items() if not k.startswith("_")}
        m = r.metrics or {}
        trials.append({
            "trial": r.path.rsplit("/", 1)[-1] if r.path else None,
            **cfg,
            METRIC: m.get(METRIC),
            "val_macro_f1": m.get("val_macro_f1"),
            "epochs": m.get("training_iteration"),
            "mlflow_run_id": m.get("mlflow_run_id"),
            "error": None if r.error is None else _error_line(r.error),
            "history": _history(r),
        })
    ok = [t for t in trials if t["error"] is None and t[METRIC] is not None]
    if not ok:
        raise RuntimeError("every Ray Tune trial failed: " + "; ".join(str(t["error"]) for t in trials))
    best = max(ok, key=lambda t: t[METRIC])
    return {"best": best, "trials": trials, "failed": [t for t in trials if t["error"]]}
