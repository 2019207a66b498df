"""retrain: validate -> tune (or train a given config) -> evaluate on held-out -> register ->
promotion gate -> summary."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from ml.train.config import TrainConfig
from tasks.common import markdown_table, publish_markdown
from tasks.mlflow_tasks import close_run, open_run, promotion_gate, register_model
from tasks.training import evaluate_model, log_training_run, lr_range_test, train_model


@flow(name="retrain")
def retrain_flow(data: str = "data/demo/synth", tune: bool = True, arch: str = "resnet18",
                 schedule: str = "sgdr_dlr_clm", lr: float | None = None, epochs: int = 3, size: int = 48,
                 batch_size: int = 32, amp: bool = False, num_samples: int = 1,
                 schedules: list[str] = ("sgd", "sgdr_dlr_clm"), tune_amp: list[bool] = (False,),
                 tune_epochs: int | None = None, val_frac: float = 0.15, test_frac: float = 0.2, seed: int = 0,
                 class_map: str | None = None, validate: bool = True, policy: str | None = None,
                 out_dir: str = "outputs/retrain") -> dict:
    """The scheduled retraining loop. Critical validation failures stop it before training."""
    from flows.train import check_request, prepare_data
    from flows.tune import tune_flow
    from flows.validate import validate_flow

    check_request([schedule, *schedules], epochs)
    logger = get_run_logger()
    manifest, cache = prepare_data(data, val_frac, test_frac, seed, size, class_map)
    validation = (validate_flow(source=data, class_map=class_map, out_dir=str(Path(out_dir) / "validate"),
                                manifest=manifest, fail_on_critical=True) if validate else None)
    run_id, _ = open_run("skinflow-retrain", f"retrain-{cache.version}", tags={"dataset_version": cache.version})
    try:
        cfg = TrainConfig(arch=arch, schedule=schedule, lr=lr or 1e-2, epochs=epochs, batch_size=batch_size,
                          amp=amp, seed=seed)
        tuned = None
        if tune:
            tuned = tune_flow(archs=[arch], schedules=list(schedules), amp=list(tune_amp), num_samples=num_samples,
                              epochs=tune_epochs or epochs, batch_size=batch_size, seed=seed,
                              out_dir=str(Path(out_dir) / "tune"), prepared=(manifest, cache), parent_run_id=run_id)
            best = tuned["best"]
            cfg.schedule, cfg.lr, cfg.amp, cfg.arch = best["schedule"], float(best["lr"]), bool(best["amp"]), best["arch"]
        elif lr is None:
            cfg.lr = lr_range_test(cache, cfg, str(Path(out_dir) / "plots"), 60, run_id=run_id)["chosen"]
        result = train_model(cache, cfg, run_id)
        evaluation = evaluate_model(result, cache, "test")
        log_training_run(run_id, result, evaluation, "test", cache, manifest, out_dir,
                         extra={"validation_passed": validation["passed"] if validation else None})
        version = register_model(run_id, {
            "dataset_version": cache.version, "schedule": cfg.schedule, "lr": f"{cfg.lr:.4g}", "amp": cfg.amp,
            "validation": "passed" if validation and validation["passed"] else ("skipped" if not validation else "warnings"),
            "config_hash": _config_hash(cfg), "eta": _eta_tag(tuned)})
        images, labels = cache.subset("test")
        gate = promotion_gate(version, images, labels, cache.classes, policy)
    except BaseException:
        close_run(run_id, "FAILED")
        raise
    close_run(run_id)
    m = evaluation["metrics"]
    summary = {"run_id": run_id, "dataset_version": cache.version, "model_version": version,
               "promoted": gate["promoted"], "gate_reason": gate["reason"], "gate_predictions": gate["predictions"],
               "schedule": cfg.schedule,
               "lr": cfg.lr, "amp": cfg.amp, "test_accuracy": m["accuracy"],
               "test_balanced_accuracy": m["balanced_accuracy"], "test_macro_f1": m["macro_f1"],
               "eta_over_sgd": _eta_tag(tuned), "trials": len(tuned["trials"]) if tuned else 0, "failed_trials": len(tuned["failed"]) if tuned else 0,
               "validation_passed": validation["passed"] if validation else None}
    publish_markdown("retrain-summary", "## Retrain summary\n\n" + markdown_table([summary]))
    logger.info("retrain done: v%s %s", version, "promoted to champion" if gate["promoted"] else "kept as challenger")
    return summary


def _eta_tag(tuned: dict | None) -> str:
    """Speedup of the chosen configuration over the sweep's SGD trial (thesis eta)."""
    from ml.eval.metrics import speedup_over_sgd

    if tuned is None:
        return "n/a (no sweep)"
    value = speedup_over_sgd(tuned["trials"], tuned["best"])
    return "n/a (no sgd trial in the sweep, or not reached)" if value is None else f"{value:.2f}"


def _config_hash(cfg: TrainConfig) -> str:
    import hashlib
    import json

    d = {k: v for k, v in cfg.to_dict().items() if k not in ("device", "progress", "checkpoint_dir", "num_workers")}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]
