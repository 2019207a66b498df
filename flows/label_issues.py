"""label-issues: a dataset version -> frozen ImageNet features -> cross-fitted probes (out-of-sample
probabilities) -> likely mislabelled images, copies under another label, outliers, and the confused
label pairs -> label_issues.csv, review.html, decisions.csv -> MLflow (skinflow-label-issues).

A person then edits decisions.csv, and ``skinflow data apply-decisions`` (or ``data.decisions`` in
any flow) makes the new dataset version."""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.naming import mlflow_tags, run_namer, tagged
from ml.data.config import DataConfig
from ml.project import with_project
from ml.quality.config import LabelIssuesConfig
from ml.quality.label_issues import REASONS, probe_warning
from ml.tracking.runs import run_name
from tasks.data import build_image_cache, build_manifest
from tasks.label_issues import (
    apply_label_decisions,
    embed_images,
    find_label_issues,
    log_label_issues,
    write_label_review,
)
from tasks.mlflow_tasks import tracked_run


@flow(name="label-issues", flow_run_name=run_namer("label-issues"))
def label_issues_flow(data: DataConfig = DataConfig(), issues: LabelIssuesConfig = LabelIssuesConfig()) -> dict:
    """Look for label issues in every usable image of ``data`` (all splits: a wrong label hurts in
    training and misleads in test alike). Returns the counts and where the files are."""
    with tagged("label-issues"):
        data, issues = with_project(data, issues)
        manifest = build_manifest(data.source, data.class_map, allow_outside_root=data.allow_outside_root)
        if data.decisions:  # look again after a review: the decided version
            manifest, _, _ = apply_label_decisions(manifest, data.decisions)
        if manifest.records.empty:
            raise ValueError(f"dataset {data.source} has no usable images ({len(manifest.bad)} bad files)")
        cache = build_image_cache(manifest, data.size)
        features = embed_images(cache, issues.arch)
        found = find_label_issues(manifest, cache, features, issues.folds, issues.c, issues.neighbours, issues.seed)
        method = (
            f"{issues.folds}-fold cross-fitted logistic probes (C={issues.c}) on frozen {issues.arch} ImageNet "
            f"features at {data.size} px (out-of-sample accuracy {found['probe_accuracy']:.3f}); cleanlab "
            "confident learning (prune_by_class), ranked by self-confidence; copies by SHA-256 or pHash; "
            f"outliers by mean cosine distance to the {issues.neighbours} nearest images (Datalab's IQR rule)."
        )
        warning = probe_warning(found["probe_accuracy"], issues.min_probe_accuracy)
        if warning:
            get_run_logger().warning("%s", warning)
            method += " Warning: " + warning
        flagged = found["issues"]
        counts = {"n_images": len(manifest.records), "n_flagged": len(flagged)}
        counts |= {f"n_{r}": int(flagged["reason"].str.contains(r).sum()) for r in REASONS}
        with tracked_run(
            "skinflow-label-issues",
            run_name("label-issues", data=manifest.version[:8]),
            tags=mlflow_tags(dataset_version=manifest.version),
        ) as (run_id, _):
            files = write_label_review(found, manifest, cache, issues.out_dir, method)
            params = {
                "arch": issues.arch,
                "folds": issues.folds,
                "c": issues.c,
                "size": data.size,
                "source": data.source,
            }
            log_label_issues(run_id, params, counts | {"probe_accuracy": found["probe_accuracy"]}, manifest, files)
        return {
            "dataset_version": manifest.version,
            **counts,
            "probe_accuracy": round(found["probe_accuracy"], 4),
            "warning": warning,
            **{k: str(v) for k, v in files.items()},
            "mlflow_run_id": run_id,
        }
