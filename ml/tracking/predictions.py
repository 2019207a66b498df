"""A prediction run's records in MLflow: the model and its version, the input as a dataset
(digest of the files' contents), the counts and the referral (abstention) rate as metrics, and
the table as an artifact."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from ml.tracking import runs


def input_digest(table: pd.DataFrame, sha256: Mapping[str, str]) -> str:
    """The digest of what was predicted: each file's path and content hash, in order."""
    h = hashlib.sha256()
    for path in table["path"]:
        h.update(f"{path}\0{sha256.get(path, '')}\n".encode())
    return h.hexdigest()


def log_predictions(
    run_id: str, model_uri: str, source: str, table: pd.DataFrame, counts: Mapping[str, Any], digest: str, out: Path
) -> None:
    """Params (model, source), metrics (counts, left-out share), the input as a dataset and the table."""
    runs.log_run_params(run_id, {"model_uri": model_uri, "source": source, "rows": len(table)})
    n = max(1, counts["n_files"])
    runs.log_run_metrics(
        run_id,
        {
            "n_predicted": counts["n_predicted"],
            "n_left_out": counts["n_left_out"],
            "left_out_share": counts["n_left_out"] / n,
            "n_referred": counts["n_referred"],
            "referral_rate": counts["referral_rate"],  # the abstention rate of the policy's refer rule
        },
    )
    with mlflow.start_run(run_id=run_id):
        runs.log_dataset_input(digest, "prediction-input", source, table[["path", "status", "reason"]])
    runs.log_run_artifact(run_id, out, "predictions")
