"""A label-issues run's records in MLflow: the method as params, the counts per reason as metrics,
the dataset it looked at as an input, and the issues table, noise table, review page and decisions
template as artifacts."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from ml.tracking import runs


def log_label_issues(
    run_id: str,
    params: Mapping[str, Any],
    counts: Mapping[str, int],
    version: str,
    source: str,
    records: pd.DataFrame,
    files: list[Path],
) -> None:
    """Params (backbone, folds, ...), metrics (``n_images``, ``n_flagged`` and ``n_<reason>``), the
    dataset version as the run's input and each of ``files`` under ``label_issues/``."""
    runs.log_run_params(run_id, dict(params))
    runs.log_run_metrics(run_id, {k: float(v) for k, v in counts.items()})
    with mlflow.start_run(run_id=run_id):
        runs.log_dataset_input(version, "label-issues-input", source, records[["path", "label", "split"]])
    for path in files:
        runs.log_run_artifact(run_id, path, "label_issues")
