"""The main job on the embedded default: synthetic SD-198-style set -> retrain loop -> a drift
check of a shifted batch and predictions on new images with the champion."""

from __future__ import annotations

import time
from pathlib import Path

from ml.project import DEMO_RECIPE, recipe_values

PROFILES = {
    # 2-core CPU: a few minutes, ImageNet-pretrained lite0 at the images' 64 px.
    # The recipe is ml.project.DEMO_RECIPE: what `skinflow init` proposes for the demo set.
    # 100 images a class: ~20 validation images each, so that the conformal sets (alpha 0.1 needs
    # >= 9 per class) can leave a class out; with 60 a class the rarest were in every set.
    "cpu": dict(synth=dict(per_class=100, size=64), **recipe_values(DEMO_RECIPE)),
    # a GPU machine: larger images, every variant, AMP on and off.
    "full": dict(
        synth=dict(long_tail=True, size=160),
        data=dict(size=128),
        training=dict(epochs=15, batch_size=64),
        sweep=dict(epochs=7, num_samples=2, amp=[False, True]),
    ),
}


def run_demo(out: Path, full: bool = False) -> int:
    """The whole loop on the synthetic set: retrain (validate, LR range test, sweep, fit,
    calibrate, register, gate), then what a champion is for: a drift check of a shifted batch and
    predictions on new images. Returns 0, or 1 when the loop left no champion to use."""
    from ml.data.config import DataConfig
    from ml.data.synth import SynthConfig, generate
    from ml.settings import get_settings
    from ml.train.config import LRFindConfig, SweepConfig, TrainConfig

    profile = PROFILES["full" if full else "cpu"]
    data = Path(out) / "synth"
    started = time.perf_counter()
    if not (data / "synth_meta.csv").exists():
        print(f"[1/4] generating the synthetic SD-198-style set in {data} ...")
        summary = generate(data, SynthConfig(seed=0, **profile["synth"]))
        print(f"      {summary['total']} images, {len(summary['counts'])} labels")
    else:
        print(f"[1/4] reusing the synthetic set in {data}")
    print("[2/4] retrain: validate -> LR range test -> Ray Tune sweep -> train -> calibrate -> register -> gate")
    from flows.retrain import retrain_flow

    res = retrain_flow(
        data=DataConfig(source=str(data), **profile["data"]),
        training=TrainConfig(**profile["training"]),
        sweep=SweepConfig(**profile["sweep"]),
        lr_find=LRFindConfig(**profile.get("lr_find", {})),
        tune=True,
        out_dir=str(Path(out) / "retrain"),
    )
    _print_block("retrain", res)
    champion = _champion()
    if champion is None:
        print(f"\nno champion: {res.get('gate_reason', 'the gate kept the first version')}; nothing to monitor")
        return 1
    size = profile["synth"].get("size", 64)
    shifted, new = Path(out) / "incoming" / "shifted", Path(out) / "incoming" / "new"
    print(f"[3/4] drift: a shifted batch (darker skin, a noisier camera) against {champion}")
    if not shifted.exists():
        generate(shifted, SynthConfig(per_class=6, size=size, seed=11, skin_tones=[0, 0, 0, 0, 1, 1], noise=0.04))
    from flows.monitor import monitor_flow
    from ml.monitor.config import MonitorConfig

    drift = monitor_flow(MonitorConfig(batch=str(shifted), model_uri=champion, out_dir=str(Path(out) / "monitor")))
    print(f"      verdict: {drift['verdict']} ({'; '.join(drift.get('reasons') or []) or 'no rule fired'})")
    print(f"      report: {drift['report_page']}")
    print(f"[4/4] predict: new images (one of them broken) with {champion}")
    if not new.exists():
        generate(new, SynthConfig(per_class=2, size=size, seed=12, corrupt=1))
    from flows.predict import predict_flow
    from ml.predict.config import PredictConfig

    pred = predict_flow(PredictConfig(source=str(new), model_uri=champion, out=str(Path(out) / "predictions.csv")))
    print(
        f"      {pred['n_predicted']} predicted ({pred['n_referred']} to refer to a person), "
        f"{pred['n_left_out']} left out {pred['left_out']}: {pred['out']}"
    )
    uri = get_settings().mlflow_tracking_uri
    print(f"\nfinished in {time.perf_counter() - started:.0f}s")
    print(f"Plots and reports: {Path(out) / 'retrain'}")
    print(f"Open the MLflow UI:  .venv/bin/mlflow ui --backend-store-uri {uri}")
    import mlflow

    from ml.tracking.runs import runs_page_url

    for name in ("skinflow-retrain", "skinflow-tune", "skinflow-monitor", "skinflow-predict"):
        exp = mlflow.get_experiment_by_name(name)
        if exp is not None:
            print(f"  {name}: {runs_page_url(exp.experiment_id)}")
    return 0


def _print_block(title: str, res: dict) -> None:
    width = max(len(k) for k in res)
    print("\n" + "=" * 60 + f"\nskinflow demo: {title}\n" + "=" * 60)
    for k, v in res.items():
        print(f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}")


def _champion() -> str | None:
    """``models:/<registered model>/<version>`` of the champion, None when there is none."""
    from ml.settings import get_settings
    from ml.tracking.registry import get_alias_version

    name = get_settings().registered_model
    version = get_alias_version(name, "champion")
    return None if version is None else f"models:/{name}/{version}"
