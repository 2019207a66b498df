"""retrain: validate -> tune (or train the given config) -> evaluate on held-out -> register ->
promotion gate -> summary."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from prefect import flow, get_run_logger

from flows.naming import mlflow_tags, run_namer, tagged
from ml.data.config import DataConfig
from ml.data.split import split_digests
from ml.project import with_project
from ml.tracking.runs import run_name
from ml.train.config import LRFindConfig, SweepConfig, TrainConfig
from tasks.common import markdown_table, publish_markdown
from tasks.data import build_image_cache, load_manifest
from tasks.mlflow_tasks import log_quarantine, promotion_gate, register_model, tracked_run
from tasks.training import calibrate_model, evaluate_model, log_training_run, train_model


@flow(name="retrain", flow_run_name=run_namer("retrain"))
def retrain_flow(
    data: DataConfig = DataConfig(),
    training: TrainConfig = TrainConfig(),
    sweep: SweepConfig = SweepConfig(),
    lr_find: LRFindConfig = LRFindConfig(),
    tune: bool = True,
    validate_data: bool = True,
    policy: str | None = None,
    validation_policy: str | None = None,
    out_dir: str = "outputs/retrain",
) -> dict:
    """The scheduled retraining loop. Critical validation failures stop it before training; files of
    findings the validation policy quarantines are set aside and it trains on the new dataset version.
    With ``tune`` the sweep's best (arch, schedule, LR, AMP) replaces those of ``training``;
    without it ``training`` is fitted as given (its LR from a range test when unset)."""
    with tagged("retrain"):
        data, training, sweep, lr_find = with_project(
            data, training, sweep, lr_find
        )  # the project file under what was given
        from flows.train import prepare_data, with_lr
        from flows.tune import run_sweep
        from flows.validate import validate_manifest

        if data.test_frac <= 0:
            raise ValueError("retrain needs a held-out test split for the promotion gate: set data.test_frac > 0")
        logger = get_run_logger()
        manifest, cache = prepare_data(data)
        validation = (
            validate_manifest(
                manifest, data.source, validation_policy, str(Path(out_dir) / "validate"), fail_on_critical=True
            )
            if validate_data
            else None
        )
        quarantine = validation["quarantine"] if validation else None
        if quarantine:  # files the policy quarantines: train on the new version without them
            manifest = load_manifest(quarantine["manifest"])
            cache = build_image_cache(manifest, data.size)
        with tracked_run(
            "skinflow-retrain",
            run_name("retrain", data=cache.version[:8]),
            tags=mlflow_tags(dataset_version=cache.version),
            system_metrics=True,
        ) as (run_id, _):
            if quarantine:  # the list of the files set aside, on the run that trained without them
                log_quarantine(run_id, quarantine)
            tuned = None
            if tune:
                tuned = run_sweep(cache, sweep, training, lr_find, str(Path(out_dir) / "tune"), parent_run_id=run_id)
                best = tuned["best"]
                cfg = training.model_copy(
                    update={
                        "schedule": best["schedule"],
                        "lr": float(best["lr"]),
                        "amp": bool(best["amp"]),
                        "arch": best["arch"],
                    }
                )
            else:
                cfg, _ = with_lr(cache, training, lr_find, out_dir, run_id)
            result = train_model(cache, cfg, run_id)
            result = calibrate_model(result, cache, out_dir)
            evaluation = evaluate_model(result, cache, "test")
            logged = log_training_run(
                run_id,
                result,
                evaluation,
                "test",
                cache,
                manifest,
                out_dir,
                extra={"validation_passed": validation["passed"] if validation else None},
            )
            version = register_model(
                logged["model_uri"],
                {
                    "dataset_version": cache.version,
                    "schedule": cfg.schedule,
                    "lr": f"{cfg.lr:.4g}",
                    "amp": cfg.amp,
                    "validation": "passed"
                    if validation and validation["passed"]
                    else ("skipped" if not validation else "warnings"),
                    "config_hash": config_hash(cfg),
                    "eta": _eta_tag(tuned),
                },
            )
            images, labels = cache.subset("test")
            gate = promotion_gate(
                version, images, labels, cache.classes, policy, digests=split_digests(manifest, "test")
            )
        m = evaluation["metrics"]
        summary = {
            "run_id": run_id,
            "dataset_version": cache.version,
            "model_version": version,
            "promoted": gate["promoted"],
            "gate_reason": gate["reason"],
            "gate_predictions": gate["predictions"],
            "schedule": cfg.schedule,
            "lr": cfg.lr,
            "amp": cfg.amp,
            "eval_split": "test",
            "test_images": len(labels),
            "test_accuracy": m["accuracy"],
            "test_balanced_accuracy": m["balanced_accuracy"],
            "test_macro_f1": m["macro_f1"],
            "eta_over_sgd": _eta_tag(tuned),
            "trials": len(tuned["trials"]) if tuned else 0,
            "failed_trials": len(tuned["failed"]) if tuned else 0,
            "gate_evaluated_on": gate.get("evaluated_on"),
            "gate_heldout_overlap": gate.get("heldout_overlap"),
            "validation_passed": validation["passed"] if validation else None,
            "quarantined": quarantine["summary"] if quarantine else None,
            "parent_dataset_version": quarantine["parent_dataset_version"] if quarantine else None,
        }
        publish_markdown("retrain-summary", "## Retrain summary\n\n" + markdown_table([summary]))
        logger.info(
            "retrain done: v%s %s", version, "promoted to champion" if gate["promoted"] else "kept as challenger"
        )
        return summary


def _eta_tag(tuned: dict | None) -> str:
    """Speedup of the chosen configuration over the sweep's SGD trial (thesis eta)."""
    from ml.eval.metrics import speedup_over_sgd

    if tuned is None:
        return "n/a (no sweep)"
    value = speedup_over_sgd(tuned["trials"], tuned["best"])
    return "n/a (no sgd trial in the sweep, or not reached)" if value is None else f"{value:.2f}"


def config_hash(cfg: TrainConfig) -> str:
    """12 hex digits identifying what a configuration trains (runtime-only fields left out)."""
    return hashlib.sha256(json.dumps(cfg.identity(), sort_keys=True).encode()).hexdigest()[:12]
