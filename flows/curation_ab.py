"""curation-ab: does curating a dataset (e.g. removing pen marks) help the model? (thesis ch. 4)

One manifest and ONE duplicate-aware split; the curated copy is a new dataset version whose CSV
manifest keeps every image's split; the same model, config and seed train on both; both are
evaluated on the same held-out (test) images, each in its own version; the deltas go to a
Prefect table, an MLflow parent run with one child run per arm, and a JSON report.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from ml.quality.curation import STEPS, ab_comparison
from ml.train.config import TrainConfig
from tasks.curation import check_curated_splits, curate_copy, log_curation_ab
from tasks.data import build_image_cache, build_manifest, split_dataset
from tasks.mlflow_tasks import close_run, open_run
from tasks.training import evaluate_model, log_training_run, train_model

EXPERIMENT = "skinflow-curation"
ARMS = ("baseline", "curated")


def check_request(steps: list[str], schedule: str, epochs: int, test_frac: float) -> None:
    """Clear errors before any work starts."""
    from flows.train import check_request as check_training

    check_training(schedule, epochs)
    if not steps:
        raise ValueError(f"give at least one curation step from {list(STEPS)}")
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        raise ValueError(f"unknown curation steps {unknown}; choose from {list(STEPS)}")
    if not 0.0 < test_frac < 1.0:
        raise ValueError(f"test_frac must be in (0, 1), got {test_frac}: the comparison needs a test split "
                         "that model selection (best epoch on val) never saw")


@flow(name="curation-ab")
def curation_ab_flow(data: str = "data/demo/synth", steps: list[str] | None = None, arch: str = "resnet18",
                     schedule: str = "sgdr_dlr_clm", lr: float = 1e-2, epochs: int = 5, size: int = 64,
                     batch_size: int = 64, snapshots: int = 1, weights: str = "none", seed: int = 0,
                     val_frac: float = 1 / 6, test_frac: float = 0.2, policy_path: str | None = None,
                     out_dir: str = "outputs/curation_ab") -> dict:
    """Split once -> curated copy (splits kept) -> train the same config on both -> compare on test."""
    steps = list(steps or ["remove_confounders"])
    check_request(steps, schedule, epochs, test_frac)
    logger = get_run_logger()

    manifest = build_manifest(data)
    if manifest.records.empty:
        raise ValueError(f"dataset {data} has no usable images ({len(manifest.bad)} bad files)")
    manifest = split_dataset(manifest, val_frac, test_frac, seed)
    version = curate_copy(manifest, steps, policy_path)
    curated = build_manifest(str(version.manifest_csv))
    check_curated_splits(manifest, curated, version)
    if curated.classes != manifest.classes:
        raise ValueError(f"curation lost classes: {sorted(set(manifest.classes) - set(curated.classes))}")
    manifests = {"baseline": manifest, "curated": curated}
    caches = {arm: build_image_cache(m, size) for arm, m in manifests.items()}

    cfg = TrainConfig(arch=arch, weights=weights, schedule=schedule, lr=lr, epochs=epochs, batch_size=batch_size,
                      snapshots=snapshots, seed=seed)
    tags = {"dataset_version": manifest.version, "curated_dataset_version": curated.version,
            "curation_steps": "+".join(steps), "schedule": schedule}
    parent, _ = open_run(EXPERIMENT, f"curation-ab-{arch}-{'+'.join(steps)}", tags=tags)
    children: dict[str, str] = {}
    metrics: dict[str, dict] = {}
    try:
        for arm in ARMS:
            cache = caches[arm]
            run_id, _ = open_run(EXPERIMENT, arm, parent_run_id=parent,
                                 tags={"arm": arm, "dataset_version": cache.version})
            children[arm] = run_id
            try:
                result = train_model(cache, cfg, run_id)
                evaluation = evaluate_model(result, cache, "test")
                log_training_run(run_id, result, evaluation, "test", cache, manifests[arm],
                                 str(Path(out_dir) / arm), extra={"arm": arm})
            except BaseException:
                close_run(run_id, "FAILED")
                raise
            close_run(run_id)
            metrics[arm] = evaluation["metrics"]
        comparison = ab_comparison(metrics["baseline"], metrics["curated"])
        report = {
            "data": data, "steps": steps, "eval_split": "test", "seed": seed,
            "config": cfg.to_dict(), "dataset_version": manifest.version,
            "split_counts": {s: int(n) for s, n in manifest.records["split"].value_counts().items()},
            "curated": {"dir": str(version.root), "manifest": str(version.manifest_csv),
                        "dataset_version": curated.version, "counts": version.counts(), "reused": version.reused},
            "parent_run_id": parent, "child_run_ids": children, "comparison": comparison,
            "per_class_recall": {arm: {c: v["recall"] for c, v in m["per_class"].items()}
                                 for arm, m in metrics.items()},
        }
        report_path = log_curation_ab(parent, report, out_dir)
    except BaseException:
        close_run(parent, "FAILED")
        raise
    close_run(parent)
    for row in comparison:
        logger.info("test %s: baseline %s curated %s delta %s", row["metric"], row["baseline"], row["curated"],
                    row["delta"])
    return {"parent_run_id": parent, "child_run_ids": children, "dataset_version": manifest.version,
            "curated_dataset_version": curated.version, "curated_dir": str(version.root),
            "curated_manifest": str(version.manifest_csv), "curation_log": str(version.root / "curation_log.csv"),
            "comparison": comparison, "report": report_path}
