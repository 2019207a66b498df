"""train: one configuration, one model (plus the lr-find and pretrain procedures).

Each flow takes typed configuration objects (:class:`~ml.data.config.DataConfig`,
:class:`~ml.train.config.TrainConfig`, :class:`~ml.train.config.LRFindConfig`); their defaults
live in those classes and nowhere else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from prefect import flow, get_run_logger
from pydantic import Field

from flows.naming import mlflow_tags, run_namer, tagged
from ml.data.config import DataConfig
from ml.project import with_project
from ml.tracking.runs import run_name
from ml.train.config import LRFindConfig, TrainConfig
from ml.train.precision import precision_for
from tasks.common import publish_table
from tasks.data import build_image_cache, build_manifest, split_dataset
from tasks.label_issues import apply_label_decisions
from tasks.mlflow_tasks import supersede_interrupted_run, tracked_run
from tasks.training import (
    calibrate_model,
    evaluate_model,
    log_training_run,
    run_lr_range_test,
    run_repeated_fits,
    train_model,
)


def prepare_data(data: DataConfig):
    """Manifest (with ``data.decisions`` applied) -> duplicate-aware split -> decoded image cache.
    Returns (manifest, cache)."""
    manifest = build_manifest(data.source, data.class_map, allow_outside_root=data.allow_outside_root)
    if data.decisions:  # a person's label-review decisions: train on the version they make
        manifest, _, _ = apply_label_decisions(manifest, data.decisions)
    if manifest.records.empty:
        raise ValueError(f"dataset {data.source} has no usable images ({len(manifest.bad)} bad files)")
    manifest = split_dataset(manifest, data.val_frac, data.test_frac, data.seed)
    return manifest, build_image_cache(manifest, data.size)


def eval_split_of(cache) -> str:
    """The split final figures come from: the held-out test split when there is one, else val."""
    return "test" if len(cache.subset("test")[1]) else "val"


def with_lr(cache, training: TrainConfig, lr_find: LRFindConfig, out_dir: str, run_id: str | None = None):
    """``training`` with its LR: as given, or chosen by an LR range test on the training split.
    Returns ``(config, range test summary or None)``."""
    if training.lr is not None:
        return training, None
    finder = run_lr_range_test(cache, training, str(Path(out_dir) / "plots"), lr_find, run_id=run_id)
    get_run_logger().info("LR range test chose %.3g (bracket %.3g..%.3g)", finder["chosen"], *finder["bracket"])
    return training.model_copy(update={"lr": finder["chosen"]}), finder


@flow(name="train", flow_run_name=run_namer("train"))
def train_flow(
    data: DataConfig = DataConfig(),
    training: TrainConfig = TrainConfig(),
    lr_find: LRFindConfig = LRFindConfig(),
    repeats: Annotated[int, Field(gt=0)] = 1,
    out_dir: str = "outputs/train",
) -> dict:
    """LR range test (unless ``training.lr`` is given) -> fit -> evaluate on the test split (val
    when the data have none) -> log plots, metrics and model; with ``repeats > 1`` also refit with
    further seeds and report mean +/- std (Table 4.2 form)."""
    with tagged("train"):
        data, training, lr_find = with_project(data, training, lr_find)  # the project file under what was given
        manifest, cache = prepare_data(data)
        with tracked_run(
            "skinflow-train",
            run_name("train", training, arch=training.arch, precision=precision_for(training).name),
            tags=mlflow_tags(),
            system_metrics=True,
        ) as (run_id, _):
            if training.checkpoint_dir:  # a rerun after a crash resumes from the checkpoint: say which run it replaces
                supersede_interrupted_run(training.checkpoint_dir, run_id)
            cfg, finder = with_lr(cache, training, lr_find, out_dir, run_id)
            result = train_model(cache, cfg, run_id)
            result = calibrate_model(result, cache, out_dir)
            eval_split = eval_split_of(cache)
            evaluation = evaluate_model(result, cache, eval_split)
            logged = log_training_run(run_id, result, evaluation, eval_split, cache, manifest, out_dir)
            repeated = (
                run_repeated_fits(cache, cfg, evaluation["metrics"], repeats, eval_split, run_id)
                if repeats > 1
                else None
            )
        m = evaluation["metrics"]
        summary = {
            "run_id": run_id,
            "dataset_version": cache.version,
            "lr": cfg.lr,
            "eval_split": eval_split,
            "eval_images": len(evaluation["pred"]),
            "accuracy": m["accuracy"],
            "balanced_accuracy": m["balanced_accuracy"],
            "macro_f1": m["macro_f1"],
            "auroc_macro": m.get("auroc_macro"),
            "epochs_run": result.epochs_run,
            "wall_seconds": round(result.wall_seconds, 2),
            "amp_dtype": result.amp_dtype,
            "top_confused_pairs": m["confused_pairs"][:4],
            **logged,
            **({"lr_bracket": finder["bracket"], "lr_range_reused": finder["reused"]} if finder else {}),
            **(
                {
                    "repeats": {k: v for k, v in repeated.items() if k != "confused_pairs"},
                    "confused_pairs_mean_std": [p["text"] for p in repeated["confused_pairs"][:4]],
                }
                if repeated
                else {}
            ),
        }
        publish_table("train-summary", summary, "skinflow train")
        return summary


@flow(name="lr-find", flow_run_name=run_namer("lr-find"))
def lr_find_flow(
    data: DataConfig = DataConfig(),
    training: TrainConfig = TrainConfig(),
    lr_find: LRFindConfig = LRFindConfig(),
    out_dir: str = "outputs/lr_find",
) -> dict:
    """Smith's LR range test on the training split: suggestions and a log-scale bracket."""
    with tagged("lr-find"):
        data, training, lr_find = with_project(data, training, lr_find)  # the project file under what was given
        _, cache = prepare_data(data)
        # asked for a range test: it measures (and stores what it measured for later runs)
        return run_lr_range_test(cache, training, out_dir, lr_find.model_copy(update={"reuse": False}))


@flow(name="pretrain", flow_run_name=run_namer("pretrain"))
def pretrain_flow(
    out: str,
    data: DataConfig = DataConfig(),
    training: TrainConfig = TrainConfig(),
    lr_find: LRFindConfig = LRFindConfig(),
) -> dict:
    """Train a backbone on a source set and store it (path or s3://) for ``weights=`` later."""
    with tagged("pretrain"):  # a source set of its own: the project file's data is the target
        from tasks.training import pretrain_and_store_backbone

        _, cache = prepare_data(data)
        cfg, _ = with_lr(cache, training, lr_find, str(Path(out).parent if "://" not in out else "outputs/pretrain"))
        return pretrain_and_store_backbone(cache, cfg, out)
