"""Why a classifier confuses what it confuses: class distributions over repeated fits, galleries of
the top confused pairs with Grad-CAM for the true and the predicted class and guided
backpropagation, and the background test's before/after figure. Arrays in, JSON-able dicts and
PNGs out."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from torch import nn

from ml.eval.plots import _save, save_image_grid
from ml.interpret import cam as cams
from ml.interpret.background import background_test, occlude_centre
from ml.interpret.config import InterpretConfig
from ml.train.models import cam_target_layer
from ml.train.transforms import Stats


def class_distribution(labels: np.ndarray, predictions: Sequence[np.ndarray], classes: list[str]) -> list[dict]:
    """Per class: the share of true labels and the mean +/- std share of predictions over fits
    (the thesis's "bias toward simpler labels": classes predicted more often than they occur)."""
    k = len(classes)
    true = np.bincount(labels, minlength=k) / len(labels)
    pred = np.stack([np.bincount(p, minlength=k) / len(p) for p in predictions])
    std = pred.std(0, ddof=1) if len(pred) > 1 else np.zeros(k)
    return [
        {
            "class": c,
            "true_share": float(true[i]),
            "predicted_share_mean": float(pred[:, i].mean()),
            "predicted_share_std": float(std[i]),
            "bias": float(pred[:, i].mean() - true[i]),
        }
        for i, c in enumerate(classes)
    ]


def plot_class_distribution(rows: list[dict], path: str | Path) -> Path:
    """Bars of true vs predicted shares per class (predicted: mean over fits, std as error bars)."""
    fig = Figure(figsize=(max(5.0, 0.7 * len(rows) + 2), 4))
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["true_share"] for r in rows], 0.4, label="true")
    ax.bar(
        x + 0.2,
        [r["predicted_share_mean"] for r in rows],
        0.4,
        yerr=[r["predicted_share_std"] for r in rows],
        label="predicted (mean ± std over fits)",
    )
    ax.set_xticks(x, [r["class"] for r in rows], rotation=45, ha="right")
    ax.set(ylabel="share of evaluation images", title="true vs predicted class distribution")
    ax.legend(fontsize="small")
    return _save(fig, path)


def pair_errors(labels: np.ndarray, pred: np.ndarray, a: int, b: int, limit: int) -> np.ndarray:
    """Indices of images of the pair misclassified as each other (true a as b, true b as a),
    alternating between the two directions, at most ``limit``."""
    ab = list(np.flatnonzero((labels == a) & (pred == b)))
    ba = list(np.flatnonzero((labels == b) & (pred == a)))
    out = []
    while (ab or ba) and len(out) < limit:
        for side in (ab, ba):
            if side and len(out) < limit:
                out.append(side.pop(0))
    return np.asarray(out, dtype=np.int64)


def caption(classes: list[str], true: int, pred: int, probs: np.ndarray) -> str:
    """``"actual (p) / predicted (p)"``, e.g. ``"ulcer (0.21) / tumor (0.64)"``."""
    return f"{classes[true]} ({probs[true]:.2f}) / {classes[pred]} ({probs[pred]:.2f})"


def cam_layer_for(arch: str, input_size: int, min_side: int = 4) -> Callable[[nn.Module], nn.Module]:
    """The Grad-CAM layer of an ``arch`` model at ``input_size`` (:func:`cam_target_layer`)."""
    return lambda model: cam_target_layer(model, arch, input_size=input_size, min_side=min_side)


def pair_gallery(
    model: nn.Module,
    layer_for: Callable[[nn.Module], nn.Module],
    norm: Stats,
    images: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    pair: tuple[int, int],
    cfg: InterpretConfig,
    path: str | Path,
) -> dict[str, Any]:
    """The misclassified images of one pair, each in a row: the image captioned "actual (p) /
    predicted (p)", Grad-CAM for the true class, Grad-CAM for the predicted class, and (with
    ``cfg.guided_backprop``) guided backpropagation for the predicted class. ``model`` is the real
    module (any precision; an fp32 copy is used), ``layer_for`` picks the Grad-CAM layer of a
    model (:func:`cam_layer_for`). Returns the entries shown (empty: no PNG)."""
    net = cams.fp32_eval_copy(model)
    probs = cams.probabilities(net, images, norm)
    pred = probs.argmax(1)
    idx = pair_errors(labels, pred, *pair, cfg.per_pair)
    if len(idx) == 0:
        return {"pair": [classes[pair[0]], classes[pair[1]]], "images": [], "png": None}
    layer = layer_for(net)
    x = cams.inputs(images[idx], norm, cams.model_device(net))
    true_maps = cams.gradcam_maps(net, layer, x, labels[idx].tolist())
    pred_maps = cams.gradcam_maps(net, layer, x, pred[idx].tolist())
    tiles, titles = [], []
    guided = cams.guided_backprop(net, x, pred[idx].tolist()) if cfg.guided_backprop else None
    for n, i in enumerate(idx):
        t, p = int(labels[i]), int(pred[i])
        tiles += [images[i], cams.cam_overlay(images[i], true_maps[n]), cams.cam_overlay(images[i], pred_maps[n])]
        titles += [caption(classes, t, p, probs[i]), f"Grad-CAM: {classes[t]}", f"Grad-CAM: {classes[p]}"]
        if guided is not None:
            tiles.append(cams.guided_image(guided[n]))
            titles.append(f"guided backprop: {classes[p]}")
    ncols = 4 if guided is not None else 3
    png = save_image_grid(np.stack(tiles).astype(np.uint8), titles, path, ncols=ncols)
    return {
        "pair": [classes[pair[0]], classes[pair[1]]],
        "png": str(png),
        "layer": _layer_name(net, layer),
        "images": [
            {
                "index": int(i),
                "actual": classes[int(labels[i])],
                "predicted": classes[int(pred[i])],
                "p_actual": float(probs[i, labels[i]]),
                "p_predicted": float(probs[i, pred[i]]),
                "cam_true_mean": float(true_maps[n].mean()),
                "cam_pred_mean": float(pred_maps[n].mean()),
                "cam_difference": float(np.abs(true_maps[n] - pred_maps[n]).mean()),
            }
            for n, i in enumerate(idx)
        ],
    }


def _layer_name(model: nn.Module, layer: nn.Module) -> str:
    return next((name for name, m in model.named_modules() if m is layer), type(layer).__name__)


def background(
    model: nn.Module,
    norm: Stats,
    images: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    cfg: InterpretConfig,
    path: str | Path | None = None,
    temperature: float = 1.0,
) -> dict[str, Any]:
    """:func:`ml.interpret.background.background_test` with the model's fp32 probabilities,
    calibrated by ``temperature`` (the fit's, so that "confident" means what it says); with
    ``path``, a PNG of up to ``cfg.background_examples`` before/after pairs."""
    from ml.eval.calibration import apply_temperature

    net = cams.fp32_eval_copy(model)
    res = background_test(
        lambda imgs: apply_temperature(cams.probabilities(net, imgs, norm), temperature),
        images,
        labels,
        cfg.confidence,
        cfg.patch_frac,
    )
    shown = res["indices"][: cfg.background_examples]
    res["png"] = None
    if path is not None and shown:
        covered = occlude_centre(images[shown], cfg.patch_frac)
        tiles = np.concatenate([np.stack([images[i], c]) for i, c in zip(shown, covered)])
        titles = []
        for n, i in enumerate(shown):
            titles += [f"{classes[labels[i]]}", f"-> {classes[res['pred_after'][n]]} ({res['p_true_after'][n]:.2f})"]
        res["png"] = str(save_image_grid(tiles, titles, path, ncols=min(8, 2 * len(shown))))
    return res
