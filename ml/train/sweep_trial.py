"""One trial of the sweep (:mod:`ml.train.sweep`): what it trains on, what it reports, and how
its run ends.

A trial is a function trainable (:func:`run_trial`) that runs :func:`ml.train.loop.fit` with
three callbacks: :class:`ml.train.cycle_score.CycleEndScore` (the validation balanced accuracy
of the snapshot ensemble the trial would hand over, at its schedule's cycle ends), one that
reports every epoch to Tune (``ray.tune.report``, with a checkpoint when one was written: every
``checkpoint_interval_s`` and after the last epoch, so an interrupted tune resumes with
``Tuner.restore``), and one that records the epoch in the trial's run. Where that run lives is
the :class:`TrialRecorder` in the trial's config (``_recorder``; the MLflow one is
:class:`ml.tracking.trials.MlflowTrials`): this module has no MLflow of its own.

A trial ends ``completed`` (it reached its budget), ``stopped_early`` (ASHA pruned it, or fit's
early stopping ended it) or ``error``; its run says which (:data:`OUTCOMES`).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from ml.train.config import TrainConfig
    from ml.train.models import WeightsFetcher
    from ml.train.precision import Precision

METRIC = "val_balanced_accuracy"  # each epoch's model on its own
SCORE = "val_ensemble_balanced_accuracy"  # what trials are ranked and pruned by (see CycleEndScore)
CLOCK = "rung_clock"  # ASHA's time attribute: epochs at the trial's last cycle end, + 1
SCORE_FILE = "cycle_score.npz"

COMPLETED, STOPPED_EARLY, ERROR = "completed", "stopped_early", "error"
OUTCOMES = (COMPLETED, STOPPED_EARLY, ERROR)

# The TrainConfig fields a trial sets itself: its cell's lr, schedule, amp and arch, its own
# progress (off) and checkpoint folder (run_trial); the sweep's epochs, seed and checkpoint
# interval (the trials' `_base`, ml/train/sweep.py run_trials).
TRIAL_SETS = frozenset(
    {"lr", "schedule", "amp", "arch", "epochs", "seed", "checkpoint_interval_s", "progress", "checkpoint_dir"}
)


def trial_base(training) -> dict[str, Any]:
    """What every trial takes from the training config (a :class:`ml.train.config.TrainConfig`):
    every field but :data:`TRIAL_SETS`, so that a new field (or force_amp) reaches the trials
    without being listed; the runtime-only fields a trial does not set (device, num_workers) are
    this machine's and reach them too. ``snapshots`` is the size of the ensemble a trial is scored
    as (see CycleEndScore)."""
    return {k: v for k, v in training.to_dict().items() if k not in TRIAL_SETS}


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


class TrialRun(Protocol):
    """A trial's open run."""

    run_id: str

    def log_epoch(self, metrics: dict[str, float | None], epoch: int) -> None:
        """One epoch's row (with :data:`SCORE` at a cycle end)."""

    def end(self, outcome: str | None, stopped_by: str | None = None) -> None:
        """Close the run: ``outcome`` one of :data:`OUTCOMES` (None: the trial was torn down by
        something else than an error, e.g. Ctrl-C); ``stopped_by`` who stopped a
        ``stopped_early`` trial (``scheduler``, ``early_stopping``)."""


class TrialRecorder(Protocol):
    """Where trials record their runs; it travels to the trials in their config (so it pickles),
    and a restored tune's trials keep the recorder they started with."""

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
    ) -> TrialRun:
        """Open the run of ``trial`` (Tune's trial name), or continue the one an earlier attempt
        of it opened (Tune retried it: ``restored_epoch`` is the checkpoint's epoch)."""

    def close(self, run_id: str, outcome: str, stopped_by: str | None = None) -> None:
        """End the trial run ``run_id`` from the driver if it is still open (else nothing): Tune
        stops a trial ASHA pruned by stopping its actor, which may end before the trial ends its
        run (:class:`ml.train.sweep_callbacks.CloseStoppedRuns`)."""


def outcome_of(result: Mapping[str, Any], config: Mapping[str, Any], failed: bool = False) -> str:
    """A trial's outcome from its last reported ``result`` and its ``config``: ``error`` (it
    failed), ``stopped_early`` (its last epoch lies before the sweep's budget, ``_base.epochs``:
    ASHA pruned it, or fit's early stopping ended it) or ``completed``."""
    if failed:
        return ERROR
    budget = (config.get("_base") or {}).get("epochs")
    epoch = result.get("epoch", result.get("training_iteration"))
    if budget is None or (epoch is not None and epoch >= budget):
        return COMPLETED
    return STOPPED_EARLY


def trial_index(trial: str) -> str:
    """``run_trial_ccd60_00003`` -> ``3`` (Tune's trial names end in the trial's index); a name
    without one is kept whole."""
    tail = trial.rsplit("_", 1)[-1]
    return str(int(tail)) if tail.isdigit() else trial


def run_trial(config: dict, data: TrialData, fetch_weights: WeightsFetcher | None = None) -> None:
    """One trial: fit with its cycle-end score, Tune reporting and a run in ``config["_recorder"]``.

    ``config``: the grid's ``cell`` (``schedule``, ``lr``, ``lr_bracket``), ``amp``, ``arch``; the
    sweep's ``_base`` training config and ``_cpus``. The run ends ``completed`` when fit reached
    the budget, ``stopped_early`` with ``stopped_by=scheduler`` when ASHA stopped the trial (Tune
    ends it with ``SystemExit`` from ``tune.report``, re-raised) or ``early_stopping`` when fit's
    patience ran out, and ``error`` when fit raised."""
    import ray
    import torch
    from ray import tune
    from ray.tune import Checkpoint

    from ml.train.checkpoint import checkpoint_files, load_verified
    from ml.train.config import TrainConfig
    from ml.train.cycle_score import CycleEndScore
    from ml.train.loop import Callback, fit
    from ml.train.precision import precision_for

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
        restored_epoch = int(load_verified(ckpt_dir / "last.pt")["epoch"])

    recorder: TrialRecorder = config["_recorder"]
    if config.get("_recorder_fields"):  # the fields this trial started with (see run_trials)
        recorder = dataclasses.replace(recorder, **config["_recorder_fields"])
    node_id = ray.get_runtime_context().get_node_id()
    run = recorder.start(
        trial=tune.get_context().get_trial_name(),
        cfg=cfg,
        precision=precision_for(cfg),  # as fit chooses it
        lr_bracket=tuple(cell["lr_bracket"]),
        ensemble=ensemble,
        data=data,
        node_id=node_id,
        restored_epoch=restored_epoch,
    )

    class Report(Callback):
        def on_epoch_end(self, epoch: int, metrics: dict, state) -> None:
            run.log_epoch({**metrics, **({SCORE: score.value} if score.at_cycle_end else {})}, epoch)
            report = {
                **metrics,
                SCORE: metrics[METRIC] if score.value is None else score.value,
                CLOCK: score.clock,
                "cycle_end": score.at_cycle_end,
                "node_id": node_id,
                "mlflow_run_id": run.run_id,
            }
            if state.checkpoint_epoch != epoch:  # fit wrote no checkpoint this epoch (interval)
                tune.report(report)
                return
            with tempfile.TemporaryDirectory() as d:
                for src, dst in zip(checkpoint_files(ckpt_dir / "last.pt"), checkpoint_files(Path(d) / "last.pt")):
                    _link_or_copy(src, dst)
                score.save(Path(d) / SCORE_FILE)
                tune.report(report, checkpoint=Checkpoint.from_directory(d))

    try:
        result = fit(data.train, data.val, data.classes, cfg, callbacks=[score, Report()], fetch_weights=fetch_weights)
    except SystemExit:  # tune.report's way to end a trial the scheduler stopped (ASHA pruned it)
        run.end(STOPPED_EARLY, stopped_by="scheduler")
        raise
    except Exception:
        run.end(ERROR)
        raise
    except BaseException:
        run.end(None)
        raise
    else:
        if result.stopped_early:  # fit's own early stopping (patience) ended it before its budget
            run.end(STOPPED_EARLY, stopped_by="early_stopping")
        else:
            run.end(COMPLETED)
    finally:
        shutil.rmtree(ckpt_dir, ignore_errors=True)


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard link (free, same filesystem) or copy; fit replaces ``src`` atomically, so a link
    keeps the reported version intact."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy(src, dst)
