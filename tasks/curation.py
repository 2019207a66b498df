"""Prefect tasks over ml.quality.curation: a curated copy of a split dataset (new version, splits kept) and
the MLflow/Prefect reporting of a curated-vs-original A/B comparison. No ML logic here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from ml.settings import get_settings
from ml.tracking import studies as tracked_studies
from tasks.common import IO_RETRY, publish_table


def _dataset_name(source: str) -> str:
    p = Path(str(source).rstrip("/"))
    return p.stem if p.suffix.lower() == ".csv" else p.name


@task(name="curate-copy", cache_policy=NO_CACHE)
def curate_copy(manifest, steps: list[str], policy_path: str | None = None):
    """Write the curated copy of a split ``manifest`` as a new dataset version under
    ``<data_root>/datasets/<name>-curated/<curation key>/`` (reused when already complete) with a CSV
    manifest that keeps every image's split. Returns :class:`ml.quality.curation.CuratedVersion`."""
    from ml.quality.curation import curation_key, write_curated_version
    from ml.quality.validation import load_policy

    policy = load_policy(policy_path)
    key = curation_key(manifest.records, steps, policy)
    dest = get_settings().data_root / "datasets" / f"{_dataset_name(manifest.source)}-curated" / key
    version = write_curated_version(manifest.records, dest, steps, policy)
    get_run_logger().info(
        "curated copy of %s at %s (%s): %s",
        manifest.version,
        version.root,
        "reused" if version.reused else "written",
        version.counts(),
    )
    return version


@task(name="check-curated-splits", cache_policy=NO_CACHE)
def check_curated_splits(manifest, curated_manifest, version) -> None:
    """Fail when any curated record's split or label differs from its original's (or one is missing,
    other than files curation could not read)."""
    from ml.quality.curation import split_mismatches, with_sources

    bad = split_mismatches(manifest.records, with_sources(curated_manifest.records, version.manifest_csv))
    unreadable = set(version.log.loc[version.log["status"] == "unreadable", "path"])
    bad = bad[~((bad["problem"] == "missing") & bad["path"].isin(unreadable))]
    if len(bad):
        raise ValueError(
            f"the curated manifest does not keep the original split assignment: "
            f"{bad.head(5).to_dict('records')} ({len(bad)} rows)"
        )


@task(name="log-curation-ab", **IO_RETRY, cache_policy=NO_CACHE)
def log_curation_ab(parent_run_id: str, report: dict[str, Any], out_dir: str) -> str:
    """The A/B report: JSON file, parent-run params (the training config without its runtime-only
    fields)/metrics/artifact and the ``curation-ab-summary`` table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "curation_ab.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    split = report["eval_split"]
    tracked_studies.log_curation_ab_run(parent_run_id, report, path)
    rows = [
        {"metric": f"{split}_{r['metric']}", "baseline": r["baseline"], "curated": r["curated"], "delta": r["delta"]}
        for r in report["comparison"]
    ]
    publish_table(
        "curation-ab-summary",
        rows,
        f"Same model, config and seed on {report['dataset_version']} (baseline) and its curated copy "
        f"{report['curated']['dataset_version']} ({'+'.join(report['steps'])}); "
        f"delta = curated - baseline on the same {split} images",
    )
    return str(path)
