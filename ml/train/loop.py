"""The training loop of the thesis's scheme: layer-grouped schedules, snapshots, AMP, resume.

Data arrive as uint8 NHWC arrays already at training size; augmentation and normalisation run
per batch on the training device. Side effects only through `Callback`s and `checkpoint_dir`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ml.eval.metrics import classification_metrics, nll
from ml.eval.trust import Trust
from ml.train.batches import Arrays, TrainBatches, normalisation_for
from ml.train.checkpoint import (
    StateDict,
    cpu_state,
    load_checkpoint,
    progress_bar,
    rng_state,
    save_atomic,
    seed_everything,
    set_rng_state,
)
from ml.train.config import EPOCH_METRICS, TrainConfig
from ml.train.models import WeightsFetcher, build_model, layer_groups, load_weights, place_model
from ml.train.precision import Precision, precision_for, resolve_device
from ml.train.predict import ensemble_proba, predict_proba
from ml.train.schedules import Schedule, make_schedule, whole_cycle_epochs
from ml.train.step import BatchCallback, NonFiniteLoss, TrainStep, run_batches
from ml.train.transforms import Stats

CHECKPOINT_FILE = "last.pt"
log = logging.getLogger("ml.train")


@dataclass
class TrainState:
    """Live view of a run handed to callbacks; a callback may set `stop_requested`."""

    cfg: TrainConfig
    classes: list[str]
    model: nn.Module
    schedule: Schedule
    device: torch.device
    epoch: int = 0
    iteration: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    stop_requested: bool = False
    checkpoint_epoch: int = 0  # epoch of the last checkpoint written to `cfg.checkpoint_dir`
    val_probs: np.ndarray | None = None  # the last epoch's validation probabilities (no TTA)


class Callback:
    """Hooks into `fit`; every method is an optional no-op."""

    def on_train_begin(self, state: TrainState) -> None:
        """Called once before the first (or resumed) epoch."""

    def on_epoch_end(self, epoch: int, metrics: dict[str, float], state: TrainState) -> None:
        """Called after each epoch (1-based) with its history row, after checkpointing."""

    def on_snapshot(self, index: int, iteration: int, state: TrainState) -> None:
        """Called when cycle `index` (0-based) completes at `iteration` and a snapshot is kept."""

    def on_train_end(self, result: TrainResult) -> None:
        """Called once with the final result."""


@dataclass
class TrainResult:
    """Outcome of `fit`; `snapshots` are CPU state dicts of the last cycle ends."""

    model: nn.Module
    classes: list[str]
    history: list[dict[str, float]]
    lr_trace: list[list[float]]
    snapshots: list[StateDict]
    snapshot_iterations: list[int]
    best_epoch: int
    best_metrics: dict[str, float]
    val_metrics: dict[str, Any]
    epochs_run: int
    wall_seconds: float
    config: dict[str, Any]
    device: str
    amp_dtype: str | None
    norm: Stats
    stopped_early: bool
    weights_report: dict[str, Any] | None = None
    precision_reason: str = ""  # why the run trained at `amp_dtype` (see `choose_precision`)
    # calibration, conformal sets and refer rule fitted after training (ml.eval.trust; None before)
    trust: Trust | None = None

    @property
    def precision(self) -> Precision:
        """The precision the run trained (and predicts) in, and why."""
        return Precision(getattr(torch, self.amp_dtype) if self.amp_dtype else None, self.precision_reason)

    def predict_proba(
        self, images: np.ndarray, batch_size: int = 128, tta: bool | None = None, calibrated: bool = True
    ) -> np.ndarray:
        """Class probabilities; the mean softmax over snapshots when there are any, calibrated by
        the fitted temperature once :attr:`trust` is set (unless ``calibrated`` is False)."""
        kwargs = dict(
            norm=self.norm,
            device=torch.device(self.device),
            batch_size=batch_size,
            amp_dtype=self.precision.dtype,
            tta=self.config["tta"] if tta is None else tta,
        )
        if self.snapshots:
            probs = ensemble_proba(self.model, self.snapshots, images, **kwargs)
        else:
            probs = predict_proba(self.model, images, **kwargs)
        return self.trust.calibrated(probs) if (calibrated and self.trust is not None) else probs


def _check_inputs(train: Arrays, val: Arrays, classes: list[str], cfg: TrainConfig) -> None:
    for name, (images, labels) in (("train", train), ("val", val)):
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"{name} images must be uint8 (N,H,W,3), got {images.dtype} {images.shape}")
        if len(images) != len(labels) or len(labels) == 0:
            raise ValueError(f"{name}: {len(images)} images vs {len(labels)} labels (must match, > 0)")
        if labels.min() < 0 or labels.max() >= len(classes):
            raise ValueError(f"{name} labels must lie in [0, {len(classes)})")
    if cfg.lr is None:
        raise ValueError("cfg.lr is None: choose it with an LR range test (ml.train.recipes.find_lr) or set it")


def _resume_key(cfg: TrainConfig) -> dict[str, Any]:
    return cfg.identity()  # runtime-only fields may change between a run and its resumption


# --- the loop -------------------------------------------------------------------------------


@dataclass
class _Run:
    """Mutable bookkeeping of one `fit` call (everything a checkpoint must carry)."""

    state: TrainState
    step: TrainStep  # the one training step (its gradient scaler is checkpointed)
    generators: dict[str, torch.Generator]
    lr_trace: list[list[float]] = field(default_factory=list)
    snapshots: list[StateDict] = field(default_factory=list)
    snapshot_iterations: list[int] = field(default_factory=list)
    best_epoch: int = 0
    best_value: float | None = None
    best_state: StateDict | None = None
    bad_epochs: int = 0
    stopped_early: bool = False
    elapsed: float = 0.0

    def checkpoint(self) -> dict[str, Any]:
        s = self.state
        return {
            "config": _resume_key(s.cfg),
            "epoch": s.epoch,
            "iteration": s.iteration,
            "model": cpu_state(s.model),
            "optimizer": s.schedule.optimizer.state_dict(),
            "scheduler": s.schedule.scheduler.state_dict(),
            "scaler": self.step.scaler.state_dict(),
            "history": s.history,
            "lr_trace": self.lr_trace,
            "snapshots": self.snapshots,
            "snapshot_iterations": self.snapshot_iterations,
            "best": {
                "epoch": self.best_epoch,
                "value": self.best_value,
                "state": self.best_state,
                "bad_epochs": self.bad_epochs,
            },
            "stopped_early": self.stopped_early,
            "elapsed": self.elapsed,
            "rng": rng_state(self.generators),
        }

    def restore(self, ckpt: dict[str, Any]) -> None:
        s = self.state
        s.model.load_state_dict(ckpt["model"])
        s.schedule.optimizer.load_state_dict(ckpt["optimizer"])
        s.schedule.scheduler.load_state_dict(ckpt["scheduler"])
        self.step.scaler.load_state_dict(ckpt["scaler"])
        s.epoch, s.iteration, s.history = ckpt["epoch"], ckpt["iteration"], ckpt["history"]
        self.lr_trace = ckpt["lr_trace"]
        self.snapshots, self.snapshot_iterations = ckpt["snapshots"], ckpt["snapshot_iterations"]
        best = ckpt["best"]
        self.best_epoch, self.best_value, self.best_state, self.bad_epochs = (
            best["epoch"],
            best["value"],
            best["state"],
            best["bad_epochs"],
        )
        self.stopped_early, self.elapsed = ckpt["stopped_early"], ckpt["elapsed"]
        set_rng_state(ckpt["rng"], self.generators)


# On CUDA, reading the loss back makes the host wait for the device every step, so the next
# batch cannot be queued while the GPU works: the loss is summed on the device and read (and
# checked for divergence) only every _CUDA_SYNC_EVERY steps and at the end of the epoch.
_CUDA_SYNC_EVERY = 16


def _maybe_snapshot(run: _Run, callbacks: Sequence[Callback]) -> None:
    s = run.state
    ends = s.schedule.cycle_end_iters
    if s.cfg.snapshots == 0 or s.iteration not in ends:
        return
    run.snapshots = (run.snapshots + [cpu_state(s.model)])[-s.cfg.snapshots :]
    run.snapshot_iterations = (run.snapshot_iterations + [s.iteration])[-s.cfg.snapshots :]
    for cb in callbacks:
        cb.on_snapshot(ends.index(s.iteration), s.iteration, s)


class _EpochSteps(BatchCallback):
    """`fit`'s bookkeeping after each step of an epoch: the LR trace and the schedule's step,
    snapshots at cycle ends, progress, and the epoch's mean loss (read back, and checked, every
    `sync_every` steps and at the epoch's end)."""

    def __init__(self, run: _Run, callbacks: Sequence[Callback], bar: tqdm, steps: int) -> None:
        self.run, self.callbacks, self.bar, self.steps = run, callbacks, bar, steps
        device = run.state.device
        self.sync_every = _CUDA_SYNC_EVERY if device.type == "cuda" else 1
        self.total = torch.zeros((), dtype=torch.float64, device=device)
        self.count, self.done, self.mean = 0, 0, 0.0

    def on_batch_end(self, loss: torch.Tensor, size: int) -> None:
        run, s = self.run, self.run.state
        run.lr_trace.append(s.schedule.lrs())
        s.schedule.scheduler.step()
        s.iteration += 1
        self.total += loss.double() * size
        self.count, self.done = self.count + size, self.done + 1
        _maybe_snapshot(run, self.callbacks)
        self.bar.update()
        if self.done % self.sync_every == 0 or self.done == self.steps:  # the last step is always read back
            self.mean = float(self.total) / self.count
            if not math.isfinite(self.mean):
                raise NonFiniteLoss(self.mean, s.iteration, exact=self.sync_every == 1)
            self.bar.set_postfix(loss=f"{self.mean:.4f}")


def _train_epoch(run: _Run, batches: TrainBatches, callbacks: Sequence[Callback], bar: tqdm) -> float:
    run.state.model.train()
    epoch = _EpochSteps(run, callbacks, bar, len(batches))
    run_batches(run.step, batches, (epoch,), start=run.state.iteration)
    return epoch.mean


def _validate(
    run: _Run, val: Arrays, classes: list[str], norm: Stats, amp_dtype: torch.dtype | None
) -> dict[str, float]:
    s = run.state
    probs = s.val_probs = predict_proba(s.model, val[0], norm, s.device, max(128, s.cfg.batch_size), amp_dtype)
    metrics = classification_metrics(val[1], probs, classes)
    row = {"val_loss": nll(val[1], probs)}
    row.update({f"val_{m}": math.nan if metrics[m] is None else float(metrics[m]) for m in EPOCH_METRICS})
    return row


def _improved(value: float, best: float | None, monitor: str) -> bool:
    if math.isnan(value):
        return False
    if best is None:
        return True
    return value < best if monitor.endswith("loss") else value > best


def _end_epoch(run: _Run, row: dict[str, float]) -> None:
    """Record the row; update best epoch, best state and early stopping."""
    s, cfg = run.state, run.state.cfg
    s.history.append(row)
    patience = cfg.early_stopping_patience
    if _improved(row[cfg.monitor], run.best_value, cfg.monitor):
        run.best_epoch, run.best_value, run.bad_epochs = s.epoch, row[cfg.monitor], 0
        if patience is not None:
            run.best_state = cpu_state(s.model)
    else:
        run.bad_epochs += 1
        run.stopped_early = patience is not None and run.bad_epochs >= patience


def _epoch_bar(run: _Run, steps: int) -> tqdm:
    s = run.state
    return progress_bar(steps, f"epoch {s.epoch + 1}/{s.cfg.epochs}", s.cfg.progress)


def fit(
    train: Arrays,
    val: Arrays,
    classes: list[str],
    cfg: TrainConfig,
    callbacks: Sequence[Callback] = (),
    model: nn.Module | None = None,
    fetch_weights: WeightsFetcher | None = None,
) -> TrainResult:
    """Train `cfg.arch` (or the given `model`, weights already loaded) on uint8 NHWC arrays.
    `fetch_weights` resolves MLflow model URIs in `cfg.weights` (see `load_weights`).

    Resumes from `cfg.checkpoint_dir/last.pt` when present; on CPU a resumed run is
    bit-identical to an uninterrupted one.

    An epoch budget that ends inside a cycle of the schedule is rounded down to the last whole
    cycle (`whole_cycle_epochs`, one warning on logger ``ml.train``): the result's config and
    history show the epochs trained.
    """
    _check_inputs(train, val, classes, cfg)
    epochs, note = whole_cycle_epochs(cfg.schedule, cfg.epochs)
    if note:
        log.warning(note)
        cfg = cfg.model_copy(update={"epochs": epochs})
    torch.set_flush_denormal(True)
    device = resolve_device(cfg.device)
    precision = precision_for(cfg)
    amp_dtype = precision.dtype
    seed_everything(cfg.seed)
    weights_report = None
    if model is None:
        model = build_model(cfg.arch, len(classes))
        if cfg.weights != "none":
            weights_report = load_weights(model, cfg.weights, cfg.arch, fetch=fetch_weights).to_dict()
    model = place_model(model, device, cfg.channels_last)
    norm = normalisation_for(cfg, train[0])
    batches = TrainBatches(train, len(classes), cfg, norm, device)
    schedule = make_schedule(
        cfg.schedule,
        layer_groups(model, cfg.arch),
        cfg.lr,
        len(batches),
        cfg.epochs,
        lr_min=cfg.lr_min,
        weight_decay=cfg.weight_decay,
    )
    run = _Run(
        state=TrainState(cfg, list(classes), model, schedule, device),
        step=TrainStep(model, schedule.optimizer, F.cross_entropy, device=device, amp_dtype=amp_dtype),
        generators=batches.generators,
    )
    ckpt_path = Path(cfg.checkpoint_dir) / CHECKPOINT_FILE if cfg.checkpoint_dir else None
    ckpt = load_checkpoint(ckpt_path, _resume_key(cfg)) if ckpt_path is not None else None
    if ckpt is not None:
        run.restore(ckpt)
    _run_epochs(run, batches, val, norm, amp_dtype, callbacks, ckpt_path)
    result = _finish(run, val, norm, precision, weights_report)
    for cb in callbacks:
        cb.on_train_end(result)
    return result


def _run_epochs(
    run: _Run,
    batches: TrainBatches,
    val: Arrays,
    norm: Stats,
    amp_dtype: torch.dtype | None,
    callbacks: Sequence[Callback],
    ckpt_path: Path | None,
) -> None:
    s = run.state
    if ckpt_path is not None:
        ckpt_path.parent.mkdir(parents=True, exist_ok=True)
    for cb in callbacks:
        cb.on_train_begin(s)
    last_checkpoint = time.perf_counter()
    while s.epoch < s.cfg.epochs and not (run.stopped_early or s.stop_requested):
        started = time.perf_counter()
        bar = _epoch_bar(run, len(batches))
        train_loss = _train_epoch(run, batches, callbacks, bar)
        s.epoch += 1
        row = {"epoch": s.epoch, "train_loss": train_loss, **_validate(run, val, s.classes, norm, amp_dtype)}
        row.update({f"lr_group_{i}": lr for i, lr in enumerate(s.schedule.lrs())})
        row["epoch_seconds"] = time.perf_counter() - started
        run.elapsed += row["epoch_seconds"]
        _end_epoch(run, row)
        eta = run.elapsed / s.epoch * (s.cfg.epochs - s.epoch)
        bar.set_postfix(loss=f"{train_loss:.4f}", **{s.cfg.monitor: f"{row[s.cfg.monitor]:.4f}"}, eta_run=f"{eta:.0f}s")
        bar.close()
        final = s.epoch >= s.cfg.epochs or run.stopped_early
        if ckpt_path is not None and (final or time.perf_counter() - last_checkpoint >= s.cfg.checkpoint_interval_s):
            save_atomic(run.checkpoint(), ckpt_path)
            s.checkpoint_epoch, last_checkpoint = s.epoch, time.perf_counter()
        for cb in callbacks:
            cb.on_epoch_end(s.epoch, row, s)
    if ckpt_path is not None and s.stop_requested and s.checkpoint_epoch != s.epoch:
        save_atomic(run.checkpoint(), ckpt_path)  # a callback stopped the run: keep where it stopped
        s.checkpoint_epoch = s.epoch


def _finish(
    run: _Run, val: Arrays, norm: Stats, precision: Precision, weights_report: dict[str, Any] | None
) -> TrainResult:
    s = run.state
    if run.best_state is not None:
        s.model.load_state_dict(run.best_state)
    result = TrainResult(
        model=s.model,
        classes=s.classes,
        history=s.history,
        lr_trace=run.lr_trace,
        snapshots=run.snapshots,
        snapshot_iterations=run.snapshot_iterations,
        best_epoch=run.best_epoch,
        best_metrics=next((r for r in s.history if r["epoch"] == run.best_epoch), {}),
        val_metrics={},
        epochs_run=s.epoch,
        wall_seconds=run.elapsed,
        config=s.cfg.to_dict(),
        device=str(s.device),
        amp_dtype=precision.dtype_name,
        norm=norm,
        stopped_early=run.stopped_early,
        weights_report=weights_report,
        precision_reason=precision.reason,
    )
    probs = result.predict_proba(val[0], batch_size=max(128, s.cfg.batch_size))
    result.val_metrics = {"loss": nll(val[1], probs), **classification_metrics(val[1], probs, s.classes)}
    return result
