"""Prefect tasks over ml.features / ml.validation (Great Expectations)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from ml.settings import get_settings
from tasks.common import publish_table


@task(name="compute-features", cache_policy=NO_CACHE)
def compute_features(manifest) -> pd.DataFrame:
    """Per-image features, cached on disk by dataset version; Ray when RAY_ADDRESS is set."""
    from ml.features import compute_features_cached

    settings = get_settings()
    records = _with_bad(manifest)
    return compute_features_cached(records, manifest.version, settings.data_root / "features",
                                   ray_address=settings.ray_address)


def _with_bad(manifest) -> pd.DataFrame:
    """Records plus the bad files (so integrity expectations see them, with their reasons)."""
    bad = manifest.bad.copy()
    if len(bad):
        bad["split"] = bad.get("split", "unknown")
        bad["local_path"] = bad.get("local_path", bad["path"])
    return pd.concat([manifest.records, bad], ignore_index=True, sort=False) if len(bad) else manifest.records


@task(name="run-expectations", cache_policy=NO_CACHE)
def run_expectations(features: pd.DataFrame, classes: list[str], policy_path: str | None, docs_dir: str):
    """GX suites (integrity, class balance, confounders, duplicates/leakage) + Data Docs."""
    from ml.validation import load_policy, validate_features

    report = validate_features(features, load_policy(policy_path), classes, Path(docs_dir))
    rows = [
        {"suite": r.suite, "expectation": r.expectation, "column": r.column, "observed": r.observed,
         "threshold": r.threshold, "success": r.success, "severity": r.severity}
        for r in report.results
    ]
    publish_table("validate-summary", rows, "Great Expectations results (critical failures stop the flow)")
    return report
