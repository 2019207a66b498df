"""Prefect tasks over ml.quality.features / ml.quality.validation (Great Expectations)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from ml.settings import get_settings
from tasks.common import IO_RETRY, publish_table


@task(name="compute-features", cache_policy=NO_CACHE)
def compute_features(manifest) -> pd.DataFrame:
    """Per-image features, cached on disk by dataset version; Ray when RAY_ADDRESS is set."""
    from ml.quality.features import compute_features_cached

    settings = get_settings()
    records = _with_bad(manifest)
    return compute_features_cached(
        records, manifest.version, settings.data_root / "features", ray_address=settings.ray_address
    )


def _with_bad(manifest) -> pd.DataFrame:
    """Records plus the bad files (so integrity expectations see them, with their reasons)."""
    bad = manifest.bad.copy()
    if len(bad):
        bad["split"] = bad.get("split", "unknown")
        bad["local_path"] = bad.get("local_path", bad["path"])
    return pd.concat([manifest.records, bad], ignore_index=True, sort=False) if len(bad) else manifest.records


@task(name="run-expectations", cache_policy=NO_CACHE)
def run_expectations(
    features: pd.DataFrame, classes: list[str], policy_path: str | None, docs_dir: str, quarantine=None
):
    """GX suites (integrity, class balance, confounders, duplicates/leakage), each run by a GX checkpoint whose
    ``UpdateDataDocsAction`` writes the offline Data Docs site into ``docs_dir``. After a ``quarantine``
    (:class:`ml.quality.quarantine.Quarantine`) the report names the files it set aside."""
    from ml.quality.validation import load_policy, validate_features

    report = validate_features(features, load_policy(policy_path), classes, Path(docs_dir))
    if quarantine is not None:
        report = quarantine.annotate(report)
    rows = [
        {
            "suite": r.suite,
            "expectation": r.expectation,
            "column": r.column,
            "observed": r.observed,
            "threshold": r.threshold,
            "success": r.success,
            "severity": r.severity,
        }
        for r in report.results
    ]
    publish_table("validate-summary", rows, "Great Expectations results (critical failures stop the flow)")
    return report


@task(name="quarantine-files", cache_policy=NO_CACHE)
def quarantine_files(manifest, features: pd.DataFrame, report, policy_path: str | None):
    """The files of the findings the policy quarantines, set aside into a new version of ``manifest``
    under ``<data_root>/datasets/<name>-quarantined/<quarantine key>/`` (reused when complete), listed
    in a Prefect artifact. Returns :class:`ml.quality.quarantine.Quarantine`, or None when nothing is
    set aside."""
    from ml.quality.quarantine import quarantine
    from ml.quality.validation import load_policy
    from tasks.curation import _dataset_name

    versions = get_settings().data_root / "datasets" / f"{_dataset_name(manifest.source)}-quarantined"
    held = quarantine(manifest, features, report, load_policy(policy_path), versions)
    if held is None:
        return None
    get_run_logger().warning("quarantined %s (list: %s)", held.line(), held.csv_path)
    publish_table("validate-quarantine", held.files.to_dict(orient="records"), f"Quarantined: {held.line()}")
    return held


@task(name="store-data-docs", **IO_RETRY, cache_policy=NO_CACHE)
def store_data_docs(docs_dir: str, dataset_version: str, flow_run_id: str) -> str | None:
    """Copy the Data Docs site to ``reports/validate/<version>/<flow-run>/`` on the configured
    storage (S3 when set). Returns the URI, or None when the storage root is the local disk
    the docs were written to already."""
    from ml.storage import Storage, is_s3

    settings = get_settings()
    if not is_s3(settings.root_uri) or not Path(docs_dir).is_dir():
        return None
    uri = settings.uri("reports", "validate", dataset_version, flow_run_id)
    Storage(settings).sync_dir_up(docs_dir, uri)
    return uri
