"""The main job on the embedded default: synthetic SD-198-style set -> retrain loop."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ml.project import DEMO_RECIPE, recipe_values

PROFILES = {
    # 2-core CPU: a few minutes. 15 epochs = 1+2+4+8: sgdr_dlr_clm completes four cycles.
    # The recipe is ml.project.DEMO_RECIPE: what `skinflow init` proposes for the demo set.
    "cpu": dict(synth=dict(per_class=60, size=64), **recipe_values(DEMO_RECIPE)),
    # a GPU machine: larger images, every variant, AMP on and off.
    "full": dict(
        synth=dict(long_tail=True, size=160),
        data=dict(size=128),
        training=dict(epochs=15, batch_size=64),
        sweep=dict(epochs=7, num_samples=2, amp=[False, True]),
    ),
}


def run_demo(out: Path, full: bool = False) -> int:
    from ml.data.config import DataConfig
    from ml.data.synth import SynthConfig, generate
    from ml.settings import get_settings
    from ml.train.config import SweepConfig, TrainConfig

    profile = PROFILES["full" if full else "cpu"]
    data = Path(out) / "synth"
    started = time.perf_counter()
    if not (data / "synth_meta.csv").exists():
        print(f"[1/2] generating the synthetic SD-198-style set in {data} ...")
        summary = generate(data, SynthConfig(seed=0, **profile["synth"]))
        print(f"      {summary['total']} images, {len(summary['counts'])} labels")
    else:
        print(f"[1/2] reusing the synthetic set in {data}")
    from ml.data.manifest import build_manifest

    print(json.dumps(build_manifest(str(data)).summary(), indent=2, default=str))
    print("[2/2] retrain: validate -> LR range test -> Ray Tune sweep -> train -> register -> gate")
    from flows.retrain import retrain_flow

    res = retrain_flow(
        data=DataConfig(source=str(data), **profile["data"]),
        training=TrainConfig(**profile["training"]),
        sweep=SweepConfig(**profile["sweep"]),
        tune=True,
        out_dir=str(Path(out) / "retrain"),
    )
    width = max(len(k) for k in res)
    print("\n" + "=" * 60 + "\nskinflow demo summary\n" + "=" * 60)
    for k, v in res.items():
        print(f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    uri = get_settings().mlflow_tracking_uri
    print(f"\nfinished in {time.perf_counter() - started:.0f}s")
    print(f"Plots and reports: {Path(out) / 'retrain'}")
    print(f"Open the MLflow UI:  .venv/bin/mlflow ui --backend-store-uri {uri}")
    import mlflow

    from ml.tracking.runs import runs_page_url

    for name in ("skinflow-retrain", "skinflow-tune"):
        exp = mlflow.get_experiment_by_name(name)
        if exp is not None:
            print(f"  {name}: {runs_page_url(exp.experiment_id)}")
    return 0
