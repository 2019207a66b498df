"""curation-ab: does curating a dataset (e.g. removing pen marks) help the model? (thesis ch. 4)

One manifest and ONE duplicate-aware split; the curated copy is a new dataset version whose CSV
manifest keeps every image's split; the same model, config and seed train on both; both are
evaluated on the same held-out (test) images, each in its own version; the deltas go to a
Prefect table, an MLflow parent run with one child run per arm, and a JSON report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, get_args

from prefect import flow, get_run_logger
from pydantic import Field

from flows.naming import mlflow_tags, run_namer, tagged
from ml.data.config import DataConfig
from ml.project import with_project
from ml.quality.curation import STEPS, ab_comparison
from ml.tracking.runs import run_name
from ml.train.config import LRFindConfig, TrainConfig
from tasks.curation import check_curated_splits, curate_copy, log_curation_ab
from tasks.data import build_image_cache, build_manifest, split_dataset
from tasks.mlflow_tasks import tracked_run
from tasks.training import calibrate_model, evaluate_model, log_training_run, train_model

EXPERIMENT = "skinflow-curation"
ARMS = ("baseline", "curated")


CurationStep = Literal["remove_confounders", "gamma", "fov_crop"]
assert get_args(CurationStep) == STEPS


@flow(name="curation-ab", flow_run_name=run_namer("curation-ab"))
def curation_ab_flow(
    data: DataConfig = DataConfig(),
    training: TrainConfig = TrainConfig(),
    steps: Annotated[list[CurationStep], Field(min_length=1)] = ["remove_confounders"],  # noqa: B006 - pydantic copies field defaults per instance
    lr_find: LRFindConfig = LRFindConfig(),
    policy_path: str | None = None,
    out_dir: str = "outputs/curation_ab",
) -> dict:
    """Split once -> curated copy (splits kept) -> train the same config on both -> compare on test.
    Without ``training.lr`` one LR range test on the baseline arm sets it for both arms."""
    with tagged("curation-ab"):
        data, training, lr_find = with_project(data, training, lr_find)  # the project file under what was given
        from flows.train import with_lr

        steps = list(steps)
        if data.test_frac <= 0:
            raise ValueError(
                f"data.test_frac must be in (0, 1), got {data.test_frac}: the comparison needs a test "
                "split that model selection (best epoch on val) never saw"
            )
        logger = get_run_logger()

        manifest = build_manifest(data.source, data.class_map, allow_outside_root=data.allow_outside_root)
        if manifest.records.empty:
            raise ValueError(f"dataset {data.source} has no usable images ({len(manifest.bad)} bad files)")
        manifest = split_dataset(manifest, data.val_frac, data.test_frac, data.seed)
        version = curate_copy(manifest, steps, policy_path)
        curated = build_manifest(str(version.manifest_csv))
        check_curated_splits(manifest, curated, version)
        if curated.classes != manifest.classes:
            raise ValueError(f"curation lost classes: {sorted(set(manifest.classes) - set(curated.classes))}")
        manifests = {"baseline": manifest, "curated": curated}
        caches = {arm: build_image_cache(m, data.size) for arm, m in manifests.items()}

        tags = mlflow_tags(
            dataset_version=manifest.version,
            curated_dataset_version=curated.version,
            curation_steps="+".join(steps),
            schedule=training.schedule,
        )
        children: dict[str, str] = {}
        metrics: dict[str, dict] = {}
        name = run_name("curation-ab", training, steps="+".join(steps))
        with tracked_run(EXPERIMENT, name, tags=tags) as (parent, _):
            cfg, _ = with_lr(caches["baseline"], training, lr_find, out_dir, parent)
            for arm in ARMS:
                cache = caches[arm]
                with tracked_run(
                    EXPERIMENT,
                    run_name(f"curation-ab {arm}", cfg),
                    parent_run_id=parent,
                    tags=mlflow_tags(arm=arm, dataset_version=cache.version),
                ) as (run_id, _):
                    children[arm] = run_id
                    result = train_model(cache, cfg, run_id)
                    result = calibrate_model(result, cache, str(Path(out_dir) / arm))
                    evaluation = evaluate_model(result, cache, "test")
                    log_training_run(
                        run_id,
                        result,
                        evaluation,
                        "test",
                        cache,
                        manifests[arm],
                        str(Path(out_dir) / arm),
                        extra={"arm": arm},
                    )
                metrics[arm] = evaluation["metrics"]
            comparison = ab_comparison(metrics["baseline"], metrics["curated"])
            report = {
                "data": data.source,
                "steps": steps,
                "eval_split": "test",
                "seed": data.seed,
                "config": cfg.to_dict(),
                "dataset_version": manifest.version,
                "split_counts": {s: int(n) for s, n in manifest.records["split"].value_counts().items()},
                "curated": {
                    "dir": str(version.root),
                    "manifest": str(version.manifest_csv),
                    "dataset_version": curated.version,
                    "counts": version.counts(),
                    "reused": version.reused,
                },
                "parent_run_id": parent,
                "child_run_ids": children,
                "comparison": comparison,
                "per_class_recall": {
                    arm: {c: v["recall"] for c, v in m["per_class"].items()} for arm, m in metrics.items()
                },
            }
            report_path = log_curation_ab(parent, report, out_dir)
        for row in comparison:
            logger.info(
                "test %s: baseline %s curated %s delta %s", row["metric"], row["baseline"], row["curated"], row["delta"]
            )
        return {
            "parent_run_id": parent,
            "child_run_ids": children,
            "dataset_version": manifest.version,
            "curated_dataset_version": curated.version,
            "curated_dir": str(version.root),
            "curated_manifest": str(version.manifest_csv),
            "curation_log": str(version.root / "curation_log.csv"),
            "comparison": comparison,
            "report": report_path,
        }
