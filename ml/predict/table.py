"""The prediction table: one row per input file. A usable image has its calibrated class
probabilities (``p_<class>``), its ``top_k`` labels and their probabilities, its conformal
prediction set and whether to refer it to a person; a file that gave no image has its
``reason`` and message, and empty predictions: nothing is dropped silently."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ml.eval.trust import REFER_COLUMN, SET_COLUMN

BASE_COLUMNS = ["path", "status", "reason", "message", "label", "confidence", SET_COLUMN, REFER_COLUMN]


def prediction_table(
    paths: Sequence[str],
    answers: pd.DataFrame,
    classes: Sequence[str],
    bad: pd.DataFrame | None = None,
    top_k: int = 3,
) -> pd.DataFrame:
    """Rows for ``paths`` (predicted: row ``i`` of the served model's ``answers``, calibrated
    probabilities over ``classes`` and, for a model with trust, ``prediction_set`` and ``refer``)
    then for ``bad`` (``path``, ``reason``, optional ``message``): ``status`` is ``predicted`` or
    ``left_out``; ``label`` and ``confidence`` are the top class and its calibrated probability;
    ``prediction_set`` and ``refer`` as served (empty for a model without trust);
    ``top1..top<k>`` and ``p_<class>``."""
    probs = answers[list(classes)].to_numpy(dtype=np.float64).reshape(len(paths), len(classes))
    k = min(top_k, len(classes))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    rows = pd.DataFrame({"path": list(paths), "status": "predicted", "reason": "", "message": ""})
    rows["label"] = [classes[i] for i in order[:, 0]] if len(paths) else []
    rows["confidence"] = probs[np.arange(len(paths)), order[:, 0]] if len(paths) else []
    with_trust = SET_COLUMN in answers.columns
    rows[SET_COLUMN] = answers[SET_COLUMN].astype(str).tolist() if with_trust else ""
    rows[REFER_COLUMN] = answers[REFER_COLUMN].astype(bool).tolist() if with_trust else pd.NA
    for j in range(k):
        rows[f"top{j + 1}"] = [classes[i] for i in order[:, j]] if len(paths) else []
        rows[f"top{j + 1}_p"] = probs[np.arange(len(paths)), order[:, j]] if len(paths) else []
    for c, name in enumerate(classes):
        rows[f"p_{name}"] = probs[:, c]
    if bad is not None and len(bad):
        left = pd.DataFrame(
            {
                "path": bad["path"].astype(str).tolist(),
                "status": "left_out",
                "reason": bad["reason"].astype(str).tolist(),
                "message": (bad["message"] if "message" in bad else pd.Series([""] * len(bad))).astype(str).tolist(),
            }
        )
        rows = pd.concat([rows, left], ignore_index=True)
    return rows[BASE_COLUMNS + [c for c in rows.columns if c not in BASE_COLUMNS]]


def summary(table: pd.DataFrame) -> dict:
    """Counts for the run: images predicted, files left out (per reason), labels predicted."""
    predicted = table[table["status"] == "predicted"]
    left = table[table["status"] == "left_out"]
    return {
        "n_files": int(len(table)),
        "n_predicted": int(len(predicted)),
        "n_left_out": int(len(left)),
        "left_out": {str(r): int(n) for r, n in left["reason"].value_counts().items()},
        "labels": {str(label): int(n) for label, n in predicted["label"].value_counts().items()},
        "n_referred": int(predicted[REFER_COLUMN].eq(True).sum()),
        "referral_rate": float(predicted[REFER_COLUMN].eq(True).mean()) if len(predicted) else 0.0,
    }
