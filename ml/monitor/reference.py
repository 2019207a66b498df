"""The reference a batch is compared with: by default the images the model was trained on (the
train split its run recorded by SHA-256, found in the dataset source the run logged), else a
named dataset (a source, optionally pinned to its manifest version). The model's validation
images (recorded val split) give BBSE its confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ml.data.manifest import build_manifest
from ml.monitor.batch import UNLABELLED, labeller
from ml.monitor.model import MonitoredModel, training_reference


@dataclass
class Reference:
    """``records`` to compare against, ``validation`` records (labelled) for BBSE, and where
    they came from."""

    records: pd.DataFrame
    validation: pd.DataFrame
    source: str
    dataset_version: str | None
    kind: str  # "champion-training" or "dataset"
    notes: list[str] = field(default_factory=list)


def _sample(records: pd.DataFrame, limit: int, seed: int) -> pd.DataFrame:
    if limit <= 0 or len(records) <= limit:
        return records.reset_index(drop=True)
    idx = np.sort(np.random.default_rng(seed).choice(len(records), limit, replace=False))
    return records.iloc[idx].reset_index(drop=True)


def load_reference(
    model: MonitoredModel,
    source: str | None = None,
    version: str | None = None,
    class_map: str | None = None,
    max_images: int = 1000,
    seed: int = 0,
) -> Reference:
    """The reference of ``model`` (see the module docstring); at most ``max_images`` of it
    (a seeded sample), and its validation records when the run recorded them."""
    recorded = training_reference(model)
    digests = recorded["digests"] or {}
    src = source or recorded["source"]
    if not src:
        raise ValueError(f"{model.uri}: its run logged no dataset source; name a reference dataset (--reference)")
    manifest = build_manifest(src, class_map)
    if version and manifest.version != version:
        raise ValueError(f"reference {src} is dataset version {manifest.version}, not the requested {version}")
    records = manifest.records.copy()
    if class_map is None:  # labels as the model names them; other folders stay unlabelled
        records["label"] = records["source_label"].map(labeller(None, model.classes)).fillna(UNLABELLED)
    notes = []
    val = records[records["sha256"].isin(digests.get("val", set()))]
    if source is None:
        train = records[records["sha256"].isin(digests.get("train", set()))]
        if train.empty:
            raise ValueError(
                f"none of the training images recorded for {model.uri} were found in {src}; "
                "name a reference dataset (--reference)"
            )
        kind = "champion-training"
    else:
        train, kind = records[~records["sha256"].isin(digests.get("val", set()))], "dataset"
    if val.empty:
        notes.append("no validation images of the model found: BBSE prior estimates skipped")
    return Reference(
        _sample(train, max_images, seed), _sample(val, max_images, seed), src, manifest.version, kind, notes
    )
