"""Recipes that compose the library's pieces into the thesis's procedure steps.

Pure ML (no Prefect, no MLflow): tasks call these and log what they return.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ml.data.cache import ImageCache
from ml.eval.calibration import ece, reliability
from ml.eval.metrics import classification_metrics, nll
from ml.eval.plots import plot_confusion, plot_curves, plot_lr_finder, plot_reliability, plot_roc, plot_schedule
from ml.eval.trust import PredictionPolicy, Trust
from ml.train.batches import TrainBatches, normalisation_for
from ml.train.config import LRFindConfig, TrainConfig
from ml.train.loop import TrainResult
from ml.train.lr_finder import LRFinderResult, lr_range_test
from ml.train.models import WeightsFetcher, build_model, layer_groups, load_weights, place_model
from ml.train.precision import precision_for, resolve_device
from ml.train.schedules import make_optimizer

Arrays = tuple[np.ndarray, np.ndarray]


def find_lr(
    train: Arrays,
    classes: list[str],
    cfg: TrainConfig,
    *,
    num_iter: int = 100,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    mode: str = "exp",
    fetch_weights: WeightsFetcher | None = None,
) -> LRFinderResult:
    """LR range test on the configured model with the optimiser of ``cfg.schedule``'s family
    (:func:`ml.train.schedules.make_optimizer`: Adam for ``adam``, else SGD with momentum); DLR
    variants ramp the groups keeping their ratios, so the bracket is the head's LR."""
    if len(train[1]) == 0:
        raise ValueError("LR range test needs a non-empty training split")
    torch.set_flush_denormal(True)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    model = build_model(cfg.arch, len(classes))
    if cfg.weights != "none":
        load_weights(model, cfg.weights, cfg.arch, fetch=fetch_weights)
    model = place_model(model, device, cfg.channels_last)
    groups = layer_groups(model, cfg.arch)
    opt = make_optimizer(cfg.schedule, groups, 1.0, weight_decay=cfg.weight_decay)
    loader = TrainBatches(train, len(classes), cfg, normalisation_for(cfg, train[0]), device)
    return lr_range_test(
        model,
        loader,
        F.cross_entropy,
        opt,
        start_lr=start_lr,
        end_lr=end_lr,
        num_iter=num_iter,
        mode=mode,
        device=device,
        amp_dtype=precision_for(cfg).dtype,
    )


# what a range test does not depend on: it runs before the fit, at the LR it ramps itself
_FIT_ONLY = frozenset({"lr", "lr_min", "epochs", "snapshots", "early_stopping_patience", "monitor", "tta"})
# the modules whose code decides a range test's curve: the model, its weights, the batches, the
# optimiser, the precision, the step and the test itself
RANGE_TEST_CODE = tuple(
    f"ml.train.{name}"
    for name in (
        "recipes",
        "lr_finder",
        "step",
        "precision",
        "batches",
        "prefetch",
        "transforms",
        "models",
        "efficientnet_lite",
        "checkpoint",
        "schedules",
        "config",
    )
)


def range_test_key(cache: ImageCache, cfg: TrainConfig, lr_find: LRFindConfig) -> str:
    """The identity of :func:`find_lr`'s result: the training images (the cache's dataset
    version, size, labels and split), every setting of ``cfg`` the test runs with (the precision
    this machine grants included; not the fit-only settings), the ramp, and the code that runs it
    (:data:`RANGE_TEST_CODE`). Equal keys give the same curve, so a stored result can stand for a
    new run."""
    import hashlib
    import json

    from ml.data.fingerprint import code_version

    digest = hashlib.sha256(code_version(RANGE_TEST_CODE).encode())
    digest.update(json.dumps([cache.version, cache.size, cache.classes]).encode())
    digest.update(np.ascontiguousarray(cache.labels).tobytes())
    digest.update("\0".join(map(str, cache.splits.tolist())).encode())
    settings = {k: v for k, v in cfg.identity().items() if k not in _FIT_ONLY}
    digest.update(json.dumps([settings, precision_for(cfg).name, lr_find.identity()], sort_keys=True).encode())
    return digest.hexdigest()[:32]


def evaluate(result: TrainResult, data: Arrays, tta: bool | None = None) -> dict[str, Any]:
    """Metrics of a trained result (snapshot ensemble when it has snapshots) on ``data``, with
    ``skin_tone_groups``: balanced accuracy and accuracy (Wilson interval) per skin-tone group of
    the images (:mod:`ml.eval.groups`, :mod:`ml.quality.skin_tone`), with their counts."""
    from ml.eval.groups import group_metrics
    from ml.quality.skin_tone import groups_of

    images, labels = data
    probs = result.predict_proba(images, tta=tta)
    metrics = classification_metrics(labels, probs, result.classes)
    metrics["loss"] = nll(labels, probs)
    metrics["ece"] = ece(probs, labels)  # calibrated once the result has its trust
    metrics["skin_tone_groups"] = group_metrics(labels, probs.argmax(1), groups_of(images)).to_dict(orient="records")
    return {"metrics": metrics, "probs": probs, "pred": probs.argmax(1)}


def training_plots(
    result: TrainResult, out_dir: str | Path, eval_data: Arrays | None = None, eval_probs: np.ndarray | None = None
) -> dict[str, Path]:
    """The PNGs people look at: schedule applied, curves, confusion matrix and ROC."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = {
        "lr_schedule": plot_schedule(
            result.lr_trace, out / "lr_schedule.png", cycle_end_iters=result.snapshot_iterations or None
        ),
        "curves": plot_curves(result.history, out / "curves.png"),
    }
    if eval_data is not None and eval_probs is not None:
        cm = classification_metrics(eval_data[1], eval_probs, result.classes)["confusion_matrix"]
        plots["confusion_matrix"] = plot_confusion(cm, result.classes, out / "confusion_matrix.png")
        plots["roc"] = plot_roc(eval_data[1], eval_probs, result.classes, out / "roc.png")
    return plots


def calibrate(
    result: TrainResult, val: Arrays, policy: PredictionPolicy, plot_dir: str | Path | None = None
) -> dict[str, Any]:
    """Fit the model's trust on its validation images (:meth:`ml.eval.trust.Trust.fit`: the
    temperature, the class-conditional conformal sets, the refer rule) and set ``result.trust``;
    draws ``reliability.png`` (before and after) into ``plot_dir`` when given. Returns the ECE
    figures and the plot's path (None without ``plot_dir``)."""
    images, labels = val
    raw = result.predict_proba(images, tta=result.config.get("tta"), calibrated=False)
    trust = Trust.fit(raw, labels, result.classes, policy)
    result.trust = trust
    after = trust.calibrated(raw)
    cal = trust.calibration
    plot = None
    if plot_dir is not None:
        plot = plot_reliability(
            {"before": reliability(raw, labels), "after (temperature scaling)": reliability(after, labels)},
            {"before": cal.ece_before, "after (temperature scaling)": cal.ece_after},
            Path(plot_dir) / "reliability.png",
        )
    return {
        "val_ece": cal.ece_before,
        "val_ece_calibrated": cal.ece_after,
        "temperature": cal.temperature,
        "plot": plot,
    }


def lr_finder_plot(res: LRFinderResult, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return plot_lr_finder(
        res.lrs,
        res.losses,
        out / "lr_finder.png",
        bracket=res.bracket,
        chosen=res.chosen,
        raw_losses=res.raw_losses,
        suggestions=res.suggestions,
        stopped_early=res.stopped_early,
    )


def predict_logged(
    arch: str,
    classes: list[str],
    states: list[dict],
    norm,
    images: np.ndarray,
    tta: bool = False,
    trust: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """Probabilities of a stored model: the mean softmax over its snapshot state dicts
    (one state = a single model), calibrated by its stored ``trust`` (``meta["trust"]``) when it
    has one, exactly as :meth:`TrainResult.predict_proba` computes them."""
    from ml.train.predict import ensemble_proba

    model = build_model(arch, len(classes))
    device = resolve_device("auto")
    model.to(device)
    stats = (tuple(norm[0]), tuple(norm[1]))
    probs = ensemble_proba(model, states, images, stats, device, tta=tta)
    fitted = Trust.from_meta(classes, trust)
    return fitted.calibrated(probs) if fitted is not None else probs
