"""Steps of the augmentation check composed from the pieces (the flow's tasks call these): the
synthetic images as a new dataset version, the binary classifiers (the training engine,
``ml.train.loop.fit``), their estimates, the control, the memorisation test, train-on-synthetic."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from ml.data.versions import build_version
from ml.eval.metrics import classification_metrics
from ml.gan.augcheck import (
    AugCheckPolicy,
    MemorisationResult,
    estimate_summary,
    memorisation_test,
    mix_at_ratio,
    penultimate_features,
    ratio_estimates,
)
from ml.gan.config import AugCheckConfig
from ml.train.config import TrainConfig
from ml.train.loop import Callback, TrainResult, fit
from ml.train.models import head_name

SYNTHETIC_MANIFEST = "manifest.csv"
SYNTHETIC_LABEL = "synthetic"
Arrays = tuple[np.ndarray, np.ndarray]


# --- the synthetic images as a dataset version ---------------------------------------------


@dataclass
class SyntheticVersion:
    root: Path
    manifest_csv: Path
    meta: dict[str, Any]
    reused: bool


def synthetic_key(meta: dict[str, Any]) -> str:
    """16 hex chars naming a synthetic version: what produced it (source version, pool, GAN config, seed, N)."""
    return hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_synthetic_version(images: np.ndarray, dest: str | Path, meta: dict[str, Any]) -> SyntheticVersion:
    """PNG files + a ``path,label`` CSV manifest (label ``synthetic``) + ``meta.json`` in the NEW
    folder ``dest`` (built in a hidden sibling and renamed into place; a complete one is reused).
    Never written into a source dataset: the originals stay as they are."""
    dest = Path(dest).resolve()

    def build(tmp: Path) -> None:
        (tmp / "images").mkdir()
        paths = []
        for i, img in enumerate(images):
            rel = f"images/synthetic_{i:05d}.png"
            Image.fromarray(img).save(tmp / rel)
            paths.append(rel)
        pd.DataFrame({"path": paths, "label": SYNTHETIC_LABEL}).to_csv(tmp / SYNTHETIC_MANIFEST, index=False)
        (tmp / "meta.json").write_text(json.dumps({**meta, "n_images": len(images)}, indent=2, default=str))

    written = build_version(dest, SYNTHETIC_MANIFEST, build, kind="synthetic")
    return SyntheticVersion(dest, dest / SYNTHETIC_MANIFEST, json.loads((dest / "meta.json").read_text()), not written)


def load_synthetic_images(version: SyntheticVersion) -> np.ndarray:
    table = pd.read_csv(version.manifest_csv)
    return np.stack([np.asarray(Image.open(version.root / p).convert("RGB")) for p in table["path"]])


# --- binary classifiers and their estimates -------------------------------------------------


def classifier_config(check: AugCheckConfig, k: int, device: str = "auto", progress: bool = True) -> TrainConfig:
    """The k-th binary classifier's training run (seed ``check.seed + k``): a small model, no
    snapshots (one model per run, as in the thesis), AMP where it helps."""
    return TrainConfig(
        arch=check.arch,
        weights=check.weights,
        schedule=check.schedule,
        lr=check.lr,
        epochs=check.epochs,
        batch_size=check.classifier_batch_size,
        snapshots=0,
        amp=True,
        seed=check.seed + k,
        device=device,
        progress=progress,
    )


def train_classifiers(
    train: Arrays,
    val: Arrays,
    classes: list[str],
    check: AugCheckConfig,
    device: str = "auto",
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
) -> list[TrainResult]:
    """K binary classifiers (A = 0, B = 1) on the same real images, seeds seed..seed+K-1."""
    return [
        fit(train, val, classes, classifier_config(check, k, device, progress), callbacks=callbacks)
        for k in range(check.classifiers)
    ]


def prob_a(result: TrainResult, images: np.ndarray) -> np.ndarray:
    """P(label A) of each image (label A is class 0 of the binary task)."""
    return result.predict_proba(images, tta=False)[:, 0]


def estimate_runs(results: list[TrainResult], images: np.ndarray) -> list[dict[str, Any]]:
    """Per classifier: seed, validation accuracy, and its two estimates of the share of A in ``images``."""
    return [
        {
            "seed": r.config["seed"],
            "val_accuracy": float(r.val_metrics["accuracy"]),
            "val_balanced_accuracy": float(r.val_metrics["balanced_accuracy"]),
            **ratio_estimates(prob_a(r, images)),
        }
        for r in results
    ]


def control(results: list[TrainResult], heldout: Arrays, ratio: float, seed: int, estimate: str) -> dict[str, Any]:
    """The estimator on REAL held-out images: mixed at ``ratio`` (should give ``ratio``), label A
    only (should give ~1) and label B only (~0); the mean over the classifiers of each."""
    images, y = heldout
    a, b = images[y == 0], images[y == 1]
    mixed = mix_at_ratio(a, b, ratio, seed)
    out: dict[str, Any] = {"n_mixed": len(mixed), "n_a": len(a), "n_b": len(b)}
    for name, imgs in (("mixed", mixed), ("only_a", a), ("only_b", b)):
        values = [ratio_estimates(prob_a(r, imgs))[estimate] for r in results]
        out[name] = estimate_summary(values, {"mixed": ratio, "only_a": 1.0, "only_b": 0.0}[name])
    return out


def memorisation(
    result: TrainResult, synthetic: np.ndarray, train_images: np.ndarray, policy: AugCheckPolicy, closest: int = 8
) -> MemorisationResult:
    """:func:`memorisation_test` in the penultimate-layer features of ``result``'s model."""
    model = result.model
    head = getattr(model, head_name(result.config["arch"]))
    kwargs = dict(norm=result.norm, device=next(model.parameters()).device, amp_dtype=result.precision.dtype)
    syn = penultimate_features(model, head, synthetic, **kwargs)
    real = penultimate_features(model, head, train_images, **kwargs)
    return memorisation_test(syn, real, policy.nn_quantile, policy.max_memorised_share, closest)


def pseudo_labels(results: list[TrainResult], images: np.ndarray) -> np.ndarray:
    """Labels of unlabelled images by the classifiers' mean posterior (B where P(A) < 0.5)."""
    return (np.mean([prob_a(r, images) for r in results], axis=0) < 0.5).astype(np.int64)


def train_on_synthetic(
    synthetic: np.ndarray,
    labels: np.ndarray,
    val: Arrays,
    test: Arrays,
    classes: list[str],
    check: AugCheckConfig,
    real_results: list[TrainResult],
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Train-on-synthetic / test-on-real: a classifier trained only on the (pseudo-labelled)
    samples, scored on real test images beside the real-trained classifiers' mean."""
    cfg = classifier_config(check, 0, device, progress)
    result = fit((synthetic, labels), val, classes, cfg)
    tstr = classification_metrics(test[1], result.predict_proba(test[0], tta=False), classes)
    trtr = [classification_metrics(test[1], r.predict_proba(test[0], tta=False), classes) for r in real_results]
    return {
        "tstr_accuracy": float(tstr["accuracy"]),
        "tstr_balanced_accuracy": float(tstr["balanced_accuracy"]),
        "trtr_accuracy": float(np.mean([m["accuracy"] for m in trtr])),
        "trtr_balanced_accuracy": float(np.mean([m["balanced_accuracy"] for m in trtr])),
        "synthetic_label_counts": {classes[i]: int((labels == i).sum()) for i in range(len(classes))},
        "test_images": len(test[1]),
    }
