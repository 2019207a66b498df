"""train: one configuration, one model (plus the lr-find and pretrain procedures)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from ml.train.schedules import VARIANTS
from ml.train.config import TrainConfig
from tasks.common import publish_table
from tasks.data import build_image_cache, build_manifest, split_dataset
from tasks.mlflow_tasks import close_run, open_run
from tasks.training import evaluate_model, log_training_run, lr_range_test, repeated_fits, train_model


def check_request(schedule: str | list[str], epochs: int) -> None:
    """Clear errors before any work starts."""
    for s in [schedule] if isinstance(schedule, str) else schedule:
        if s not in VARIANTS:
            raise ValueError(f"unknown schedule {s!r}; choose from {list(VARIANTS)}")
    if epochs <= 0:
        raise ValueError(f"epochs must be positive, got {epochs}")


def prepare_data(data: str, val_frac: float, test_frac: float, seed: int, size: int,
                 class_map: str | None = None):
    """Manifest -> duplicate-aware split -> decoded image cache. Returns (manifest, cache)."""
    manifest = build_manifest(data, class_map)
    if manifest.records.empty:
        raise ValueError(f"dataset {data} has no usable images ({len(manifest.bad)} bad files)")
    manifest = split_dataset(manifest, val_frac, test_frac, seed)
    return manifest, build_image_cache(manifest, size)


@flow(name="train")
def train_flow(data: str = "data/demo/synth", arch: str = "resnet18", schedule: str = "sgdr_dlr_clm",
               lr: float | None = None, epochs: int = 7, size: int = 64, batch_size: int = 64, amp: bool = False,
               weights: str = "none", snapshots: int = 3, weighted_sampler: bool = False, tta: bool = False,
               val_frac: float = 1 / 6, test_frac: float = 0.0, seed: int = 0,
               out_dir: str = "outputs/train", lr_find_iters: int = 100, repeats: int = 1) -> dict:
    """LR range test (unless ``lr`` is given) -> fit -> evaluate -> log plots, metrics and model;
    with ``repeats > 1`` also refit with further seeds and report mean +/- std (Table 4.2 form)."""
    check_request(schedule, epochs)
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    logger = get_run_logger()
    manifest, cache = prepare_data(data, val_frac, test_frac, seed, size)
    cfg = TrainConfig(arch=arch, weights=weights, schedule=schedule, lr=lr or 1e-2, epochs=epochs,
                      batch_size=batch_size, amp=amp, snapshots=snapshots, weighted_sampler=weighted_sampler,
                      tta=tta, seed=seed)
    run_id, _ = open_run("skinflow-train", f"{arch}-{schedule}{'-amp' if amp else ''}")
    try:
        finder = None
        if lr is None:
            finder = lr_range_test(cache, cfg, str(Path(out_dir) / "plots"), lr_find_iters, run_id=run_id)
            cfg.lr = finder["chosen"]
            logger.info("LR range test chose %.3g (bracket %.3g..%.3g)", cfg.lr, *finder["bracket"])
        result = train_model(cache, cfg, run_id)
        eval_split = "test" if test_frac > 0 else "val"
        evaluation = evaluate_model(result, cache, eval_split)
        logged = log_training_run(run_id, result, evaluation, eval_split, cache, manifest, out_dir)
        repeated = (repeated_fits(cache, cfg, evaluation["metrics"], repeats, eval_split, run_id)
                    if repeats > 1 else None)
    except BaseException:
        close_run(run_id, "FAILED")
        raise
    close_run(run_id)
    m = evaluation["metrics"]
    summary = {"run_id": run_id, "dataset_version": cache.version, "lr": cfg.lr, "eval_split": eval_split,
               "accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"], "macro_f1": m["macro_f1"],
               "auroc_macro": m.get("auroc_macro"), "epochs_run": result.epochs_run,
               "wall_seconds": round(result.wall_seconds, 2), "amp_dtype": result.amp_dtype,
               "top_confused_pairs": m["confused_pairs"][:4], **logged,
               **({"lr_bracket": finder["bracket"]} if finder else {}),
               **({"repeats": {k: v for k, v in repeated.items() if k != "confused_pairs"},
                   "confused_pairs_mean_std": [p["text"] for p in repeated["confused_pairs"][:4]]}
                  if repeated else {})}
    publish_table("train-summary", summary, "skinflow train")
    return summary


@flow(name="lr-find")
def lr_find_flow(data: str = "data/demo/synth", arch: str = "resnet18", weights: str = "none", size: int = 64,
                 batch_size: int = 64, schedule: str = "sgdr_dlr_clm", num_iter: int = 100, start_lr: float = 1e-7,
                 end_lr: float = 10.0, out_dir: str = "outputs/lr_find", seed: int = 0) -> dict:
    """Smith's LR range test on the training split: suggestions and a log-scale bracket."""
    check_request(schedule, 1)
    _, cache = prepare_data(data, 1 / 6, 0.0, seed, size)
    cfg = TrainConfig(arch=arch, weights=weights, schedule=schedule, batch_size=batch_size, seed=seed)
    return lr_range_test(cache, cfg, out_dir, num_iter, start_lr, end_lr)


@flow(name="pretrain")
def pretrain_flow(data: str, out: str, arch: str = "resnet18", epochs: int = 5, size: int = 64, amp: bool = True,
                  lr: float = 1e-2, seed: int = 0) -> dict:
    """Train a backbone on a source set and store it (path or s3://) for ``--weights`` later."""
    from tasks.training import pretrain_backbone

    _, cache = prepare_data(data, 1 / 6, 0.0, seed, size)
    cfg = TrainConfig(arch=arch, schedule="sgdr_dlr_clm", lr=lr, epochs=epochs, amp=amp, seed=seed)
    return pretrain_backbone(cache, cfg, out)
