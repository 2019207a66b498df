"""PNG figures for reports and MLflow artifacts; each function writes one file and returns its Path.

Figures are built with matplotlib's object API (``Figure`` + Agg canvas), never pyplot, so
nothing touches global state and plotting from worker threads is safe.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import auc, roc_curve

CURVE_KEYS = ("val_accuracy", "val_balanced_accuracy", "val_macro_f1")


def plot_lr_finder(
    lrs: Sequence[float],
    losses: Sequence[float],
    path: str | Path,
    *,
    bracket: tuple[float, float],
    chosen: float,
    raw_losses: Sequence[float] | None = None,
    suggestions: Mapping[str, float] | None = None,
    stopped_early: bool = False,
) -> Path:
    """Smoothed (and raw) loss against LR on a log axis, with suggestions and the bracket."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    if raw_losses is not None:
        ax.plot(lrs, raw_losses, color="0.75", lw=1, label="raw loss")
    ax.plot(lrs, losses, color="C0", lw=2, label="smoothed loss")
    ax.set_xscale("log")
    lo, hi = bracket
    ax.axvspan(lo, hi, color="C2", alpha=0.15, label=f"bracket {lo:.2e} .. {hi:.2e}")
    for i, (name, lr) in enumerate(sorted((suggestions or {}).items())):
        ax.axvline(lr, color=f"C{2 * i + 1}", ls="--", lw=1, label=f"{name} {lr:.2e}")
    ax.axvline(chosen, color="k", lw=1.5, label=f"chosen {chosen:.2e}")
    _clip_ylim(ax, losses)
    title = "LR range test" + (" (stopped early)" if stopped_early else "")
    ax.set(xlabel="learning rate", ylabel="loss", title=title)
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_schedule(
    lr_trace: Sequence[Sequence[float]], path: str | Path, cycle_end_iters: Sequence[int] | None = None
) -> Path:
    """LR of each parameter group per iteration (log y), with dotted lines at cycle ends."""
    trace = np.asarray(lr_trace, dtype=float)
    if trace.ndim != 2 or trace.size == 0:
        raise ValueError(f"lr_trace must be a non-empty list (iterations) of lists (groups), got shape {trace.shape}")
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    for g in range(trace.shape[1]):
        ax.plot(np.arange(len(trace)), trace[:, g], lw=1.5, label=f"group {g}")
    for end in cycle_end_iters or ():
        ax.axvline(end, color="0.5", ls=":", lw=1)
    if np.all(trace > 0):
        ax.set_yscale("log")
    ax.set(xlabel="iteration", ylabel="learning rate", title="LR schedule")
    ax.legend(fontsize="small")
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.12, top=0.92)  # fixed text: no layout pass
    return _save(fig, path, tight=False)


def plot_curves(history: Sequence[dict], path: str | Path) -> Path:
    """Train/val loss and val accuracy, balanced accuracy and macro-F1 per epoch.

    Uses the metric names of the conventions (``train_loss``, ``val_loss``, ``val_accuracy``,
    ``val_balanced_accuracy``, ``val_macro_f1``) and ``epoch`` when present; missing keys are skipped.
    """
    if not history:
        raise ValueError("history is empty: need at least one epoch")
    epochs = [h.get("epoch", i) for i, h in enumerate(history)]
    fig = Figure(figsize=(10, 4))
    loss_ax, score_ax = fig.subplots(1, 2)
    for ax, keys in ((loss_ax, ("train_loss", "val_loss")), (score_ax, CURVE_KEYS)):
        for key in keys:
            points = [(e, h[key]) for e, h in zip(epochs, history) if h.get(key) is not None]
            if points:
                ax.plot(*zip(*points), marker="o", ms=3, label=key)
        ax.set_xlabel("epoch")
        if ax.lines:
            ax.legend(fontsize="small")
    loss_ax.set(ylabel="loss", title="loss")
    score_ax.set(ylabel="score", title="validation", ylim=(0, 1.02))
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.91, wspace=0.22)
    return _save(fig, path, tight=False)


def plot_confusion(
    cm: np.ndarray | Sequence[Sequence[int]], classes: list[str], path: str | Path, normalize: bool = True
) -> Path:
    """Confusion matrix (rows = true class); ``normalize`` shows row fractions, annotated with counts."""
    counts = np.asarray(cm)
    k = len(classes)
    if counts.shape != (k, k):
        raise ValueError(f"confusion matrix shape {counts.shape} does not match {k} classes")
    rows = counts.sum(axis=1, keepdims=True)
    shown = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0) if normalize else counts
    size = max(4.0, 0.6 * k + 2)
    fig = Figure(figsize=(size + 1, size))
    ax = fig.add_subplot()
    image = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else max(1, counts.max()))
    fig.colorbar(image, ax=ax, fraction=0.046)
    limit = shown.max() / 2 if shown.max() > 0 else 0.5
    for i in range(k):
        for j in range(k):
            text = f"{shown[i, j]:.2f}\n({counts[i, j]})" if normalize else f"{counts[i, j]}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if shown[i, j] > limit else "black")
    ax.set_xticks(range(k), classes, rotation=45, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix" + (" (row-normalised)" if normalize else ""))
    return _save(fig, path)


def plot_roc(y_true: np.ndarray, probs: np.ndarray, classes: list[str], path: str | Path) -> Path:
    """One-vs-rest ROC curve per class; a class without positives or negatives is listed as undefined."""
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=float)
    if p.shape != (len(y), len(classes)):
        raise ValueError(f"probs must have shape ({len(y)}, {len(classes)}), got {p.shape}")
    fig = Figure(figsize=(6, 6))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.6", ls="--", lw=1)
    for c, label in enumerate(classes):
        positive = y == c
        if positive.all() or not positive.any():
            ax.plot([], [], ls="none", label=f"{label}: undefined (support {int(positive.sum())})")
            continue
        fpr, tpr, _ = roc_curve(positive, p[:, c])
        ax.plot(fpr, tpr, lw=1.5, label=f"{label} (AUC {auc(fpr, tpr):.3f})")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (one-vs-rest)")
    ax.set(xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize="x-small", loc="lower right")
    fig.subplots_adjust(left=0.12, right=0.96, bottom=0.1, top=0.94)
    return _save(fig, path, tight=False)


def plot_reliability(
    curves: Mapping[str, Mapping[str, np.ndarray]], eces: Mapping[str, float], path: str | Path
) -> Path:
    """Reliability diagram: per confidence bin, accuracy against mean confidence, one line per
    entry of ``curves`` (:func:`ml.eval.calibration.reliability`, e.g. before and after
    calibration) with its ECE in the legend; the diagonal is perfect calibration."""
    fig = Figure(figsize=(6, 6))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.6", ls="--", lw=1, label="perfectly calibrated")
    for name, curve in curves.items():
        seen = np.asarray(curve["count"]) > 0
        conf, acc = np.asarray(curve["confidence"])[seen], np.asarray(curve["accuracy"])[seen]
        ax.plot(conf, acc, marker="o", lw=1.5, label=f"{name} (ECE {eces[name]:.3f})")
    ax.set(xlabel="confidence (top label)", ylabel="accuracy", title="Reliability (15 equal-width bins)")
    ax.set(xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize="small", loc="upper left")
    fig.subplots_adjust(left=0.12, right=0.96, bottom=0.1, top=0.94)
    return _save(fig, path, tight=False)


def save_image_grid(images: np.ndarray, titles: Sequence[str] | None, path: str | Path, ncols: int = 8) -> Path:
    """A grid of uint8 NHWC images (H, W, 1 or 3 channels) with optional titles."""
    imgs = np.asarray(images)
    if imgs.dtype != np.uint8 or imgs.ndim != 4 or imgs.shape[-1] not in (1, 3) or len(imgs) == 0:
        raise ValueError(f"images must be a non-empty uint8 array (N, H, W, 1|3), got {imgs.dtype} {imgs.shape}")
    if titles is not None and len(titles) != len(imgs):
        raise ValueError(f"got {len(titles)} titles for {len(imgs)} images")
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    ncols = min(ncols, len(imgs))
    nrows = math.ceil(len(imgs) / ncols)
    shown = [wrap_title(t) for t in titles] if titles is not None else None
    lines = max((t.count("\n") + 1 for t in shown), default=1) if shown else 1
    fig = Figure(figsize=(2 * ncols, (2.05 + 0.15 * lines) * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for i, ax in enumerate(axes):
        ax.axis("off")
        if i < len(imgs):
            gray = imgs.shape[-1] == 1
            ax.imshow(imgs[i, ..., 0] if gray else imgs[i], cmap="gray" if gray else None, vmin=0, vmax=255)
            if shown is not None:
                ax.set_title(shown[i], fontsize=8)
    return _save(fig, path)


TITLE_WIDTH = 28  # characters of an 8 pt title that fit over a 2-inch tile


def wrap_title(title: object, width: int = TITLE_WIDTH) -> str:
    """A tile title broken into lines of at most ``width`` characters, so that the titles of
    neighbouring tiles never overlap: at spaces first, then after underscores (long class names
    such as ``pigmented_benign_keratosis``), and inside a word only when nothing else fits."""
    words = str(title).split(" ")
    pieces: list[str] = []
    for word in words:
        while len(word) > width:  # split a long word after its last underscore that fits
            cut = word.rfind("_", 0, width)
            cut = cut + 1 if cut > 0 else width
            pieces.append(word[:cut])
            word = word[cut:]
        pieces.append(word)
    lines: list[str] = []
    for piece in pieces:
        glue = "" if lines and lines[-1].endswith("_") else " "
        if lines and len(lines[-1]) + len(glue) + len(piece) <= width:
            lines[-1] += glue + piece
        else:
            lines.append(piece)
    return "\n".join(lines)


def _clip_ylim(ax, losses: Sequence[float]) -> None:
    """Cap the y axis just above the first loss so the final blow-up does not flatten the curve."""
    y = np.asarray(losses, dtype=float)
    lo, top = float(y.min()), max(float(y[0]), float(y.min()))
    margin = 0.1 * max(top - lo, 1e-8)
    ax.set_ylim(lo - margin, top + margin)


def _save(fig: Figure, path: str | Path, tight: bool = True) -> Path:
    """Write a PNG. ``tight=False`` for figures whose text extents are known (their margins are
    set by the caller): the tight-layout pass renders every text once more, ~half the cost."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        fig.tight_layout()
    fig.savefig(out, format="png", dpi=100)
    return out
