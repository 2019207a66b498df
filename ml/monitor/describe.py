"""What the monitor compares, per image: descriptors (from :mod:`ml.quality.features`, the same
table validation uses), penultimate-layer embeddings of the real module, and predictions
(class, max probability, entropy)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ml.data.cache import resize_crop
from ml.data.images import load_rgb
from ml.monitor.model import MonitoredModel
from ml.quality.features import compute_features

# descriptor columns the drift tests use (computed by ml.quality.features, aspect ratio added here)
DESCRIPTORS = (
    "brightness",
    "contrast",
    "saturation",
    "sharpness",
    "mean_r",
    "mean_g",
    "mean_b",
    "std_r",
    "std_g",
    "std_b",
    "confounder_score",
    "width",
    "height",
    "aspect_ratio",
)
PREDICTION_COLUMNS = ("pred_class", "max_prob", "entropy")


@dataclass
class Described:
    """One image set as the monitor sees it: ``table`` (one row per image: path, label,
    descriptors, predictions), ``embeddings`` (N, D) and ``probs`` (N, C) in row order."""

    table: pd.DataFrame
    embeddings: np.ndarray
    probs: np.ndarray
    classes: list[str]

    def __len__(self) -> int:
        return len(self.table)

    def subset(self, mask: np.ndarray) -> Described:
        mask = np.asarray(mask)
        return Described(self.table[mask].reset_index(drop=True), self.embeddings[mask], self.probs[mask], self.classes)

    def label_indices(self) -> np.ndarray:
        """Class index of each row, -1 where unlabelled or not one of the model's classes."""
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index.get(str(lab), -1) for lab in self.table["label"]], dtype=int)


def descriptors(records: pd.DataFrame, workers: int = 1) -> pd.DataFrame:
    """:data:`DESCRIPTORS` of each record (``path``/``local_path``), with ``decode_ok``."""
    feats = compute_features(records[[c for c in ("path", "local_path") if c in records]], workers=workers)
    feats["aspect_ratio"] = feats["width"] / feats["height"]
    return feats[["decode_ok", *DESCRIPTORS]]


def load_images(paths: list[str], size: int) -> np.ndarray:
    """uint8 ``(N, size, size, 3)``: each image resized and centre-cropped as the model's cache does."""
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        out[i] = np.asarray(resize_crop(load_rgb(path), size))
    return out


def prediction_table(probs: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """Predicted class, max probability and entropy (nats) of each row of ``probs``."""
    p = np.clip(probs, 1e-12, 1.0)
    return pd.DataFrame(
        {
            "pred_class": np.asarray(classes, dtype=object)[probs.argmax(axis=1)],
            "max_prob": probs.max(axis=1),
            "entropy": -(p * np.log(p)).sum(axis=1),
        }
    )


def describe(
    records: pd.DataFrame, model: MonitoredModel, workers: int = 1, progress: Callable[[int, int], None] | None = None
) -> Described:
    """Descriptors, embeddings and predictions of every record (``path``, ``local_path``,
    ``label``); records that do not decode are dropped."""
    feats = descriptors(records, workers)
    ok = feats["decode_ok"].fillna(False).astype(bool).to_numpy()
    kept = records[ok].reset_index(drop=True)
    src = kept["local_path"] if "local_path" in kept else kept["path"]
    images = load_images([str(p) for p in src], model.size)
    emb, probs = model.embed_and_predict(images, progress=progress)
    table = pd.concat(
        [
            kept[["path", "label"]].reset_index(drop=True),
            feats[ok].drop(columns="decode_ok").reset_index(drop=True),
            prediction_table(probs, model.classes),
        ],
        axis=1,
    )
    return Described(table, emb, probs, list(model.classes))
