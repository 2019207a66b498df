"""The thesis's robustness ablation (Table 5.8) on arrays: which models to train, which test sets
each is scored on, the rows of the table, and its figures.

One model trained on clean images serves every clean-trained row (clean test, noisy tests, blurred
tests); one model per noise level serves that level's two noisy-trained rows (clean test, matched
noisy test). Pure ML: the flow's tasks train, log and publish what these functions return.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ml.data.subset import per_class_subset
from ml.eval.metrics import classification_metrics
from ml.eval.plots import _save
from ml.robust.config import Corruption, RobustnessConfig
from ml.robust.corruptions import blur, default_kernel_size, directional_kernel, gaussian_kernel, salt_and_pepper

Arrays = tuple[np.ndarray, np.ndarray]
SPLIT_STREAMS = {"train": 0, "val": 1, "test": 2}  # noise streams: a split's noise never repeats another's
CLEAN = Corruption()
SETTINGS = (
    "train clean, test clean",
    "train clean, test noisy",
    "train noisy, test clean",
    "matched noise",
    "train clean, test blurred",
)
NOISE_SETTINGS = SETTINGS[1:4]  # the three curves of the accuracy-vs-noise plot


def resolved(c: Corruption, image_size: int) -> Corruption:
    """``c`` with its blur kernel side filled in for ``image_size`` (:func:`default_kernel_size`)."""
    if c.kind in ("gaussian_blur", "directional_blur") and c.kernel is None:
        return c.model_copy(update={"kernel": default_kernel_size(image_size)})
    return c


def corrupt(images: np.ndarray, c: Corruption, cfg: RobustnessConfig, split: str) -> np.ndarray:
    """``images`` under corruption ``c`` (a copy; the clean array itself for ``none``)."""
    c = resolved(c, images.shape[1])
    if c.kind == "none":
        return images
    if c.kind == "salt_and_pepper":
        return salt_and_pepper(images, c.level, seed=(cfg.seed, SPLIT_STREAMS[split]), black_share=cfg.black_share)
    if c.kind == "gaussian_blur":
        return blur(images, gaussian_kernel(c.kernel, c.sigma))
    return blur(images, directional_kernel(c.kernel, cfg.directional_angle, c.sigma, cfg.directional_sigma_across))


def training_corruptions(cfg: RobustnessConfig) -> list[Corruption]:
    """The models of the ablation: one clean, then one per noise level."""
    return [CLEAN, *(cfg.noise(level) for level in cfg.noise_levels)]


def evaluation_plan(train_c: Corruption, cfg: RobustnessConfig) -> list[tuple[str, Corruption]]:
    """``(setting, test corruption)`` rows a model trained under ``train_c`` is scored on."""
    if train_c.kind == "none":
        return [
            (SETTINGS[0], CLEAN),
            *((SETTINGS[1], cfg.noise(level)) for level in cfg.noise_levels),
            *((SETTINGS[4], b) for b in cfg.blurs()),
        ]
    return [(SETTINGS[2], CLEAN), (SETTINGS[3], train_c)]


def training_split(train: Arrays, cfg: RobustnessConfig) -> Arrays:
    """The training split, capped at ``cfg.train_per_class`` images per class (seeded)."""
    keep = per_class_subset(train[1], cfg.train_per_class, cfg.seed)
    return np.asarray(train[0][keep]), train[1][keep]


def corrupted_split(data: Arrays, c: Corruption, cfg: RobustnessConfig, split: str) -> Arrays:
    return corrupt(data[0], c, cfg, split), data[1]


def score_rows(
    predict: Callable[[np.ndarray], np.ndarray],
    test: Arrays,
    classes: list[str],
    train_c: Corruption,
    cfg: RobustnessConfig,
) -> list[dict[str, Any]]:
    """The table rows of one trained model: its test plan, each row with top-1, balanced accuracy,
    macro-F1 and the confusion matrix. ``predict`` maps uint8 images to class probabilities."""
    size = test[0].shape[1]
    rows = []
    for setting, test_c in evaluation_plan(train_c, cfg):
        test_c = resolved(test_c, size)
        probs = predict(corrupt(test[0], test_c, cfg, "test"))
        m = classification_metrics(test[1], probs, classes)
        rows.append(
            {
                "setting": setting,
                "train_status": resolved(train_c, size).label,
                "test_status": test_c.label,
                "noise_level": test_c.level if setting != SETTINGS[2] else train_c.level,
                "corruption": test_c.kind,
                "top1": m["accuracy"],
                "balanced_accuracy": m["balanced_accuracy"],
                "macro_f1": m["macro_f1"],
                "n": m["n"],
                "confusion_matrix": m["confusion_matrix"],
            }
        )
    return rows


def metric_key(row: dict[str, Any], metric: str, split: str = "test") -> str:
    """MLflow metric name of a row's figure on ``split``, e.g. ``test_top1_noise_5`` or
    ``test_macro_f1_clean``."""
    status = row["test_status"]
    if row["setting"] == SETTINGS[3]:
        tag = "matched"
    elif status == "clean":
        tag = "clean"
    elif row["corruption"] == "salt_and_pepper":
        tag = f"noise_{row['noise_level'] * 100:g}".replace(".", "p")
    else:
        tag = "blur_isotropic" if row["corruption"] == "gaussian_blur" else "blur_anisotropic"
    return f"{split}_{metric}_{tag}"


def table(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The thesis's form (train status, test status, top-1) plus balanced accuracy and macro-F1."""
    return [
        {
            "train status": r["train_status"],
            "test status": r["test_status"],
            "top-1": round(r["top1"], 4),
            "balanced accuracy": round(r["balanced_accuracy"], 4),
            "macro-F1": round(r["macro_f1"], 4),
        }
        for r in rows
    ]


def noise_curves(rows: Sequence[dict[str, Any]], metric: str = "top1") -> dict[str, list[tuple[float, float]]]:
    """``{setting: [(noise share, metric), ...]}`` for the three noise settings; each starts at
    share 0 with the clean model on clean images (the thesis's 0% column)."""
    clean = next(r for r in rows if r["setting"] == SETTINGS[0])
    curves = {}
    for setting in NOISE_SETTINGS:
        points = sorted((r["noise_level"], r[metric]) for r in rows if r["setting"] == setting)
        curves[setting] = [(0.0, clean[metric]), *points]
    return curves


def plot_noise_curves(rows: Sequence[dict[str, Any]], path: str | Path, metric: str = "top1") -> Path:
    """Accuracy against the impulse-noise share for the three settings."""
    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.add_subplot()
    for (setting, points), marker in zip(noise_curves(rows, metric).items(), "osD"):
        x, y = zip(*points)
        ax.plot([100 * v for v in x], y, marker=marker, label=setting)
    ax.set(
        xlabel="impulse noise (% of pixels, black:white 3:1)",
        ylabel="top-1 accuracy" if metric == "top1" else metric,
        title="accuracy under salt-and-pepper noise",
        ylim=(0, 1.02),
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_confusion_difference(
    cm: Sequence[Sequence[int]], cm_clean: Sequence[Sequence[int]], classes: list[str], path: str | Path, title: str
) -> Path:
    """``cm - cm_clean`` in counts (rows = true class), red where the corrupted test has more."""
    diff = np.asarray(cm) - np.asarray(cm_clean)
    k = len(classes)
    if diff.shape != (k, k):
        raise ValueError(f"confusion matrices must be {k}x{k}, got {diff.shape}")
    size = max(4.0, 0.6 * k + 2)
    fig = Figure(figsize=(size + 1, size))
    ax = fig.add_subplot()
    bound = max(1, int(np.abs(diff).max()))
    image = ax.imshow(diff, cmap="RdBu_r", vmin=-bound, vmax=bound)
    fig.colorbar(image, ax=ax, fraction=0.046)
    for i in range(k):
        for j in range(k):
            if diff[i, j]:
                ax.text(j, i, f"{diff[i, j]:+d}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(k), classes, rotation=45, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    return _save(fig, path)
