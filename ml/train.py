"""The training loop of the thesis's scheme: layer-grouped schedules, snapshots, AMP, resume.

Data arrive as uint8 NHWC arrays already at training size; augmentation and normalisation run
per batch on the training device. Side effects only through `Callback`s and `checkpoint_dir`.
"""

from __future__ import annotations

import copy
import math
import os
import queue
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, WeightedRandomSampler
from tqdm.auto import tqdm

from ml.metrics import classification_metrics
from ml.models import build_model, layer_groups, load_weights, save_checkpoint_file
from ml.schedules import Schedule, make_schedule
from ml.transforms import IMAGENET_STATS, TTA_VIEWS, Stats, augment_batch, channel_stats, to_float_batch, tta_view

Arrays = tuple[np.ndarray, np.ndarray]
StateDict = dict[str, torch.Tensor]

CHECKPOINT_FILE = "last.pt"
EPOCH_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc_macro")
MONITORS = ("train_loss", "val_loss") + tuple(f"val_{m}" for m in EPOCH_METRICS)
# Config fields that may differ between an interrupted run and its resumption.
_RESUME_FREE = ("device", "num_workers", "checkpoint_dir", "checkpoint_interval_s", "progress")


@dataclass
class TrainConfig:
    """Everything that defines a training run (flattened into MLflow params by the tasks)."""

    arch: str = "resnet18"
    weights: str = "none"
    schedule: str = "sgdr_dlr_clm"
    lr: float = 1e-2
    lr_min: float | None = None
    epochs: int = 3
    batch_size: int = 64
    weight_decay: float = 1e-4
    amp: bool = False
    channels_last: bool = False
    snapshots: int = 3
    early_stopping_patience: int | None = None
    monitor: str = "val_loss"
    weighted_sampler: bool = False
    tta: bool = False
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    checkpoint_dir: str | None = None
    # 0: a checkpoint after every epoch; t > 0: after an epoch only once t seconds have passed
    # since the last one (and always after the final epoch), like Lightning's train_time_interval
    checkpoint_interval_s: float = 0.0
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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

    def predict_proba(self, images: np.ndarray, batch_size: int = 128, tta: bool | None = None) -> np.ndarray:
        """Class probabilities; the mean softmax over snapshots when there are any."""
        kwargs = dict(
            norm=self.norm,
            device=torch.device(self.device),
            batch_size=batch_size,
            amp_dtype=getattr(torch, self.amp_dtype) if self.amp_dtype else None,
            tta=self.config["tta"] if tta is None else tta,
        )
        if self.snapshots:
            return ensemble_proba(self.model, self.snapshots, images, **kwargs)
        return predict_proba(self.model, images, **kwargs)


# --- devices and precision ------------------------------------------------------------------


def resolve_device(spec: str | torch.device) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; anything else as torch names it."""
    if str(spec) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def amp_dtype_for(device: torch.device, amp: bool) -> torch.dtype | None:
    """Autocast dtype: None without AMP; CPU bfloat16; CUDA bfloat16 if supported else float16."""
    if not amp:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and torch.amp.is_autocast_available("cpu"):
        return torch.bfloat16
    raise ValueError(f"AMP is not supported on {device}")


def _autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


# --- prediction -----------------------------------------------------------------------------


def _batches(images: np.ndarray, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, len(images), batch_size):
        yield torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))


@torch.no_grad()
def predict_proba(
    model: nn.Module,
    images: np.ndarray,
    norm: Stats,
    device: torch.device,
    batch_size: int = 128,
    amp_dtype: torch.dtype | None = None,
    tta: bool = False,
) -> np.ndarray:
    """Softmax probabilities (N, C) for uint8 NHWC `images`; with `tta` the mean over views."""
    was_training = model.training
    model.eval()
    views = TTA_VIEWS if tta else ("identity",)
    out = []
    for batch in _batches(images, batch_size):
        x = to_float_batch(batch.to(device), *norm)
        probs = torch.zeros(())
        for view in views:
            with _autocast(device, amp_dtype):
                logits = model(tta_view(x, view))
            probs = probs + torch.softmax(logits.float(), dim=1).cpu()
        out.append(probs / len(views))
    model.train(was_training)
    return torch.cat(out).double().numpy()


def ensemble_proba(
    model: nn.Module,
    snapshots: Sequence[StateDict],
    images: np.ndarray,
    norm: Stats,
    device: torch.device,
    batch_size: int = 128,
    amp_dtype: torch.dtype | None = None,
    tta: bool = False,
) -> np.ndarray:
    """Snapshot ensemble: mean of each snapshot's softmax (`model` itself is left untouched)."""
    if not snapshots:
        raise ValueError("no snapshots to ensemble")
    work = copy.deepcopy(model)
    total = 0.0
    for state in snapshots:
        work.load_state_dict(state)
        total = total + predict_proba(work, images, norm, device, batch_size, amp_dtype, tta)
    return total / len(snapshots)


# --- data -----------------------------------------------------------------------------------


class _BatchDataset(Dataset):
    """Fetches a whole batch of uint8 images by index list (one fancy index, memmap friendly)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        order = np.asarray(idx)
        return torch.from_numpy(np.ascontiguousarray(self.images[order])), torch.from_numpy(self.labels[order])


def _train_loader(train: Arrays, num_classes: int, cfg: TrainConfig, generator: torch.Generator) -> DataLoader:
    """Shuffled (or inverse-frequency weighted) batches; drops a ragged last batch (BatchNorm)."""
    images, labels = train
    n = len(labels)
    if cfg.weighted_sampler:
        counts = np.bincount(labels, minlength=num_classes)
        weights = torch.as_tensor(1.0 / counts[labels], dtype=torch.float64)
        sampler = WeightedRandomSampler(weights, n, replacement=True, generator=generator)
    else:
        sampler = RandomSampler(range(n), generator=generator)
    batches = BatchSampler(sampler, cfg.batch_size, drop_last=n >= cfg.batch_size)
    return DataLoader(
        _BatchDataset(images, labels),
        sampler=batches,
        batch_size=None,
        num_workers=cfg.num_workers,
        generator=generator,
    )


def normalisation_for(cfg: TrainConfig, train_images: np.ndarray) -> Stats:
    """ImageNet statistics for ImageNet weights, else those of the training split."""
    return IMAGENET_STATS if cfg.weights == "imagenet" else channel_stats(train_images)


class TrainBatches:
    """The training input pipeline of `fit`: seeded sampling, then per-batch normalisation and
    augmentation on `device`. Yields ``(float NCHW inputs, labels)``; also fits `lr_range_test`."""

    def __init__(self, train: Arrays, num_classes: int, cfg: TrainConfig, norm: Stats, device: torch.device) -> None:
        self.generators = {
            "sampler": torch.Generator().manual_seed(cfg.seed),
            "augment": torch.Generator().manual_seed(cfg.seed + 1),
        }
        self.loader = _train_loader(train, num_classes, cfg, self.generators["sampler"])
        self.norm = norm
        self.device = device
        self.channels_last = cfg.channels_last
        # On CUDA the uint8 gather and the pinned copy of the next batches run on a thread while the
        # GPU works (both release the GIL); on the CPU the cores are busy with the step itself.
        self.prefetch = _PREFETCH_DEPTH if device.type == "cuda" and cfg.num_workers == 0 else 0

    def __len__(self) -> int:
        return len(self.loader)

    def _host_batch(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = batch
        if self.device.type == "cuda":  # page-locked, so the copy to the device is truly asynchronous
            images, labels = images.pin_memory(), labels.pin_memory()
        return images, labels

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        host = (prefetched(self.loader, self.prefetch, self._host_batch) if self.prefetch
                else map(self._host_batch, self.loader))
        for images, labels in host:
            x = to_float_batch(images.to(self.device, non_blocking=True), *self.norm)
            x = augment_batch(x, self.generators["augment"])
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, labels.to(self.device, non_blocking=True)


_PREFETCH_DEPTH = 2


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def prefetched(items: Iterable, depth: int, prepare: Callable[[Any], Any] = lambda item: item) -> Iterator:
    """``prepare(item)`` for each of ``items`` in order, computed up to ``depth`` items ahead on a
    background thread. Errors re-raise in the consumer; closing the generator early (``break``,
    an exception in the consumer) stops and joins the thread."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(prepare(item)):
                    return
            put(end)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put(_Failed(exc))

    worker = threading.Thread(target=produce, name="skinflow-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = slots.get()
            if item is end:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        worker.join()


def _check_inputs(train: Arrays, val: Arrays, classes: list[str], cfg: TrainConfig) -> None:
    for name, (images, labels) in (("train", train), ("val", val)):
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"{name} images must be uint8 (N,H,W,3), got {images.dtype} {images.shape}")
        if len(images) != len(labels) or len(labels) == 0:
            raise ValueError(f"{name}: {len(images)} images vs {len(labels)} labels (must match, > 0)")
        if labels.min() < 0 or labels.max() >= len(classes):
            raise ValueError(f"{name} labels must lie in [0, {len(classes)})")
    if cfg.monitor not in MONITORS:
        raise ValueError(f"monitor must be one of {MONITORS}, got {cfg.monitor!r}")
    if cfg.snapshots < 0 or cfg.epochs < 1 or cfg.batch_size < 1:
        raise ValueError("snapshots must be >= 0, epochs and batch_size >= 1")


# --- checkpoints ----------------------------------------------------------------------------


def _cpu_state(model: nn.Module) -> StateDict:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """RNG states as tensors, tuples and numbers only, so that `weights_only` loading works."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": random.getstate(),
        "generators": {name: g.get_state() for name, g in generators.items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached"]))
    random.setstate(state["python"])
    for name, g in generators.items():
        g.set_state(state["generators"][name])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _resume_key(cfg: TrainConfig) -> dict[str, Any]:
    return {k: v for k, v in cfg.to_dict().items() if k not in _RESUME_FREE}


def _save_atomic(obj: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


# --- the loop -------------------------------------------------------------------------------


@dataclass
class _Run:
    """Mutable bookkeeping of one `fit` call (everything a checkpoint must carry)."""

    state: TrainState
    scaler: torch.amp.GradScaler
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
            "model": _cpu_state(s.model),
            "optimizer": s.schedule.optimizer.state_dict(),
            "scheduler": s.schedule.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "history": s.history,
            "lr_trace": self.lr_trace,
            "snapshots": self.snapshots,
            "snapshot_iterations": self.snapshot_iterations,
            "best": {"epoch": self.best_epoch, "value": self.best_value, "state": self.best_state,
                     "bad_epochs": self.bad_epochs},
            "stopped_early": self.stopped_early,
            "elapsed": self.elapsed,
            "rng": _rng_state(self.generators),
        }

    def restore(self, ckpt: dict[str, Any]) -> None:
        s = self.state
        if ckpt["config"] != _resume_key(s.cfg):
            raise ValueError(f"checkpoint in {s.cfg.checkpoint_dir} was written with another config: {ckpt['config']}")
        s.model.load_state_dict(ckpt["model"])
        s.schedule.optimizer.load_state_dict(ckpt["optimizer"])
        s.schedule.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        s.epoch, s.iteration, s.history = ckpt["epoch"], ckpt["iteration"], ckpt["history"]
        self.lr_trace = ckpt["lr_trace"]
        self.snapshots, self.snapshot_iterations = ckpt["snapshots"], ckpt["snapshot_iterations"]
        best = ckpt["best"]
        self.best_epoch, self.best_value, self.best_state, self.bad_epochs = (
            best["epoch"], best["value"], best["state"], best["bad_epochs"])
        self.stopped_early, self.elapsed = ckpt["stopped_early"], ckpt["elapsed"]
        _set_rng_state(ckpt["rng"], self.generators)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# On CUDA, reading the loss back makes the host wait for the device every step, so the next
# batch cannot be queued while the GPU works: the loss is summed on the device and read (and
# checked for divergence) only every _CUDA_SYNC_EVERY steps and at the end of the epoch.
_CUDA_SYNC_EVERY = 16


def _non_finite(iteration: int, exact: bool) -> FloatingPointError:
    where = f"at iteration {iteration}" if exact else f"by iteration {iteration}"
    return FloatingPointError(f"non-finite training loss {where} (lr too high?)")


def _train_step(run: _Run, x: torch.Tensor, labels: torch.Tensor, amp_dtype: torch.dtype | None) -> torch.Tensor:
    """One optimisation step; returns the detached loss (on the device, not read back)."""
    s = run.state
    with _autocast(s.device, amp_dtype):
        loss = F.cross_entropy(s.model(x), labels)
    if s.device.type != "cuda" and not torch.isfinite(loss):  # free on CPU: stop before the update
        raise _non_finite(s.iteration + 1, exact=True)
    optimizer = s.schedule.optimizer
    optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.step(optimizer)
    run.scaler.update()
    run.lr_trace.append(s.schedule.lrs())
    s.schedule.scheduler.step()
    s.iteration += 1
    return loss.detach()


def _maybe_snapshot(run: _Run, callbacks: Sequence[Callback]) -> None:
    s = run.state
    ends = s.schedule.cycle_end_iters
    if s.cfg.snapshots == 0 or s.iteration not in ends:
        return
    run.snapshots = (run.snapshots + [_cpu_state(s.model)])[-s.cfg.snapshots :]
    run.snapshot_iterations = (run.snapshot_iterations + [s.iteration])[-s.cfg.snapshots :]
    for cb in callbacks:
        cb.on_snapshot(ends.index(s.iteration), s.iteration, s)


def _train_epoch(run: _Run, batches: TrainBatches, amp_dtype: torch.dtype | None,
                 callbacks: Sequence[Callback], bar: tqdm) -> float:
    s = run.state
    s.model.train()
    sync_every = _CUDA_SYNC_EVERY if s.device.type == "cuda" else 1
    total = torch.zeros((), dtype=torch.float64, device=s.device)
    count, steps, mean = 0, 0, 0.0
    for x, labels in batches:
        total += _train_step(run, x, labels, amp_dtype).double() * len(labels)
        count, steps = count + len(labels), steps + 1
        _maybe_snapshot(run, callbacks)
        bar.update()
        if steps % sync_every == 0 or steps == len(batches):  # the last step is always read back
            mean = float(total) / count
            if not math.isfinite(mean):
                raise _non_finite(s.iteration, exact=sync_every == 1)
            bar.set_postfix(loss=f"{mean:.4f}")
    return mean


def _validate(run: _Run, val: Arrays, classes: list[str], norm: Stats, amp_dtype: torch.dtype | None) -> dict[str, float]:
    s = run.state
    probs = predict_proba(s.model, val[0], norm, s.device, max(128, s.cfg.batch_size), amp_dtype)
    metrics = classification_metrics(val[1], probs, classes)
    row = {"val_loss": _nll(val[1], probs)}
    row.update({f"val_{m}": math.nan if metrics[m] is None else float(metrics[m]) for m in EPOCH_METRICS})
    return row


def _nll(labels: np.ndarray, probs: np.ndarray) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())


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
            run.best_state = _cpu_state(s.model)
    else:
        run.bad_epochs += 1
        run.stopped_early = patience is not None and run.bad_epochs >= patience


def _epoch_bar(run: _Run, steps: int) -> tqdm:
    s = run.state
    return tqdm(total=steps, desc=f"epoch {s.epoch + 1}/{s.cfg.epochs}", disable=not s.cfg.progress,
                leave=False, dynamic_ncols=True)


def fit(
    train: Arrays,
    val: Arrays,
    classes: list[str],
    cfg: TrainConfig,
    callbacks: Sequence[Callback] = (),
    model: nn.Module | None = None,
) -> TrainResult:
    """Train `cfg.arch` (or the given `model`, weights already loaded) on uint8 NHWC arrays.

    Resumes from `cfg.checkpoint_dir/last.pt` when present; on CPU a resumed run is
    bit-identical to an uninterrupted one.
    """
    _check_inputs(train, val, classes, cfg)
    torch.set_flush_denormal(True)
    device = resolve_device(cfg.device)
    amp_dtype = amp_dtype_for(device, cfg.amp)
    _seed_everything(cfg.seed)
    weights_report = None
    if model is None:
        model = build_model(cfg.arch, len(classes))
        if cfg.weights != "none":
            weights_report = load_weights(model, cfg.weights, cfg.arch).to_dict()
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    norm = normalisation_for(cfg, train[0])
    batches = TrainBatches(train, len(classes), cfg, norm, device)
    schedule = make_schedule(cfg.schedule, layer_groups(model, cfg.arch), cfg.lr, len(batches), cfg.epochs,
                             lr_min=cfg.lr_min, weight_decay=cfg.weight_decay)
    run = _Run(
        state=TrainState(cfg, list(classes), model, schedule, device),
        scaler=torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16 and device.type == "cuda"),
        generators=batches.generators,
    )
    ckpt_path = Path(cfg.checkpoint_dir) / CHECKPOINT_FILE if cfg.checkpoint_dir else None
    if ckpt_path is not None and ckpt_path.is_file():
        run.restore(torch.load(ckpt_path, map_location="cpu", weights_only=True))
    _run_epochs(run, batches, val, norm, amp_dtype, callbacks, ckpt_path)
    result = _finish(run, val, norm, amp_dtype, weights_report)
    for cb in callbacks:
        cb.on_train_end(result)
    return result


def _run_epochs(run: _Run, batches: TrainBatches, val: Arrays, norm: Stats, amp_dtype: torch.dtype | None,
                callbacks: Sequence[Callback], ckpt_path: Path | None) -> None:
    s = run.state
    if ckpt_path is not None:
        ckpt_path.parent.mkdir(parents=True, exist_ok=True)
    for cb in callbacks:
        cb.on_train_begin(s)
    last_checkpoint = time.perf_counter()
    while s.epoch < s.cfg.epochs and not (run.stopped_early or s.stop_requested):
        started = time.perf_counter()
        bar = _epoch_bar(run, len(batches))
        train_loss = _train_epoch(run, batches, amp_dtype, callbacks, bar)
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
            _save_atomic(run.checkpoint(), ckpt_path)
            s.checkpoint_epoch, last_checkpoint = s.epoch, time.perf_counter()
        for cb in callbacks:
            cb.on_epoch_end(s.epoch, row, s)
    if ckpt_path is not None and s.stop_requested and s.checkpoint_epoch != s.epoch:
        _save_atomic(run.checkpoint(), ckpt_path)  # a callback stopped the run: keep where it stopped
        s.checkpoint_epoch = s.epoch


def _finish(run: _Run, val: Arrays, norm: Stats, amp_dtype: torch.dtype | None,
            weights_report: dict[str, Any] | None) -> TrainResult:
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
        amp_dtype=str(amp_dtype).removeprefix("torch.") if amp_dtype else None,
        norm=norm,
        stopped_early=run.stopped_early,
        weights_report=weights_report,
    )
    probs = result.predict_proba(val[0], batch_size=max(128, s.cfg.batch_size))
    result.val_metrics = {"loss": _nll(val[1], probs), **classification_metrics(val[1], probs, s.classes)}
    return result


def pretrain(
    images: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    cfg: TrainConfig,
    out_path: str | os.PathLike,
    val_frac: float = 1 / 6,
) -> TrainResult:
    """Fit a backbone on a source set (seeded stratified hold-out) and save it with
    `save_checkpoint_file`, so that ``weights=<out_path>`` transfers it (the head is skipped)."""
    val_mask = _stratified_holdout(labels, val_frac, cfg.seed)
    result = fit((images[~val_mask], labels[~val_mask]), (images[val_mask], labels[val_mask]), classes, cfg)
    save_checkpoint_file(result.model, cfg.arch, classes, out_path)
    return result


def _stratified_holdout(labels: np.ndarray, frac: float, seed: int) -> np.ndarray:
    """Boolean mask with about `frac` of each class (at least one, never all) held out."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        take = min(max(1, round(frac * len(idx))), len(idx) - 1)
        mask[idx[:take]] = True
    return mask
