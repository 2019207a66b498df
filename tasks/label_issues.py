"""Prefect tasks of the label-issues flow and of applying a person's decisions: thin wrappers over
ml.quality.label_issues, ml.quality.label_review, ml.data.decisions and ml.tracking.label_issues."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from ml.settings import get_settings
from tasks.common import IO_RETRY, publish_table, run_logger


@task(name="embed-images", cache_policy=NO_CACHE)
def embed_images(cache, arch: str) -> np.ndarray:
    """Pooled ImageNet features of every cached image (the frozen backbone the probes read)."""
    from ml.train.probe import pretrained_features

    run_logger().info("features of %d images from %s (ImageNet weights, frozen)", len(cache.images), arch)
    return pretrained_features(cache.images, arch)


@task(name="find-label-issues", cache_policy=NO_CACHE)
def find_label_issues(manifest, cache, features: np.ndarray, folds: int, c: float, neighbours: int, seed: int) -> dict:
    """Out-of-sample probabilities (cross-fitted probes), then the flagged images and the noise table
    (:mod:`ml.quality.label_issues`). Near-duplicates follow the validation policy's pHash distance."""

    from ml.data.duplicates import policy_max_distance
    from ml.quality import label_issues as li

    labels = np.asarray(cache.labels)
    probs = li.cross_fitted_probs(features, labels, len(cache.classes), folds, c, seed)
    groups = li.copy_groups(cache.images, manifest.records["sha256"].tolist(), policy_max_distance())
    paths = manifest.records["path"].tolist()
    issues = li.find_issues(paths, labels, cache.classes, probs, features, groups, neighbours)
    noise = li.noise_table(labels, probs, cache.classes)
    accuracy = float((probs.argmax(axis=1) == labels).mean())
    run_logger().info(
        "%d of %d images flagged; the probes' out-of-sample accuracy %.3f", len(issues), len(labels), accuracy
    )
    return {"issues": issues, "noise": noise, "probe_accuracy": accuracy}


@task(name="write-label-review", cache_policy=NO_CACHE)
def write_label_review(found: dict, manifest, cache, out_dir: str, method: str) -> dict[str, Path]:
    """``label_issues.csv``, ``noise.csv``, ``review.html`` (offline) and ``decisions.csv`` (the template
    a person fills in) under ``out_dir/<dataset version>/``, each written atomically."""
    from ml.quality.label_review import decisions_template, review_page, thumbnail_uri
    from ml.storage import atomic_write

    folder = Path(out_dir) / manifest.version
    folder.mkdir(parents=True, exist_ok=True)
    issues, noise = found["issues"], found["noise"]
    where = {p: i for i, p in enumerate(manifest.records["path"])}
    thumbs = {p: thumbnail_uri(np.asarray(cache.images[where[p]])) for p in issues["path"]}
    files = {
        "issues": folder / "label_issues.csv",
        "noise": folder / "noise.csv",
        "page": folder / "review.html",
        "decisions": folder / "decisions.csv",
    }
    atomic_write(files["issues"], issues.to_csv(index=False).encode())
    atomic_write(files["noise"], noise.to_csv(index=False).encode())
    title = f"Label review of {manifest.source} (dataset version {manifest.version})"
    atomic_write(files["page"], review_page(issues, thumbs, noise, title, method).encode())
    atomic_write(files["decisions"], decisions_template(issues).to_csv(index=False).encode())
    publish_table("label-issues", issues.head(200).to_dict(orient="records"), f"Label issues: {len(issues)} flagged")
    return files


@task(name="log-label-issues", **IO_RETRY, cache_policy=NO_CACHE)
def log_label_issues(run_id: str, params: dict, counts: dict, manifest, files: dict[str, Path]) -> None:
    from ml.tracking.label_issues import log_label_issues as log

    log(run_id, params, counts, manifest.version, manifest.source, manifest.records, list(files.values()))


@task(name="apply-label-decisions", cache_policy=NO_CACHE)
def apply_label_decisions(manifest, decisions_path: str):
    """``manifest`` with the decisions of ``decisions_path`` applied, as a new dataset version under
    ``<data_root>/datasets/<name>-decided/<key>/`` (reused when complete; the decisions are read
    every time, never cached). Returns ``(derived manifest, its manifest path, counts)``."""
    from ml.data import decisions as dec
    from tasks.curation import _dataset_name

    table = dec.read_decisions(decisions_path)
    derived = dec.apply_decisions(manifest, table, origin=str(decisions_path))
    root = get_settings().data_root / "datasets" / f"{_dataset_name(manifest.source)}-decided"
    path, _ = dec.write_decided_version(derived, table, root / dec.decisions_key(manifest, table))
    counts = dec.counts(table)
    run_logger().warning(
        "label-review decisions %s applied (%s): dataset version %s from %s, at %s",
        decisions_path,
        ", ".join(f"{k} {v}" for k, v in counts.items()),
        derived.version,
        manifest.version,
        path,
    )
    return derived, path, counts
