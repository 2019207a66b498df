"""Robustness ablation (Table 5.8) and error interpretation (Table 4.2) benchmark.

    python -m bench.bench_robustness [--datasets synth,isic9] [--out bench/out/robustness]

Runs the ``robustness`` flow on the synthetic default (the demo's set: 60 images per class at
64 px, trained at 48 px, resnet18 from scratch) and on isic9 (../shared/data/isic9) with the
ImageNet-pretrained efficientnet_lite0 at 128 px, then the ``interpret`` flow on isic9 with 3
seeds. The budget is bounded so that everything finishes in about 15 minutes on an idle 2-core
CPU (see ``PROFILES``): fixed LRs, a few epochs, no snapshot ensemble; isic9 trains on 50 images per
class (seeded subset) and is corrupted at 1, 5 and 15% only; the synthetic set at 32 px, all six levels.
The interpret part can rerun alone (``--datasets isic9 --no-robustness``, with its own ``--out``).
MLflow goes to a sqlite store under ``--out`` (``mlflow ui --backend-store-uri
sqlite:///<out>/mlflow.db`` shows the runs); the tables are printed as markdown and written to
``<out>/results.md`` and ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ISIC9 = REPO.parent / "shared" / "data" / "isic9"

# The budget of an idle 2-core CPU, about 15 minutes in all: fixed LRs, no range test, no snapshot
# ensemble (one forward pass per image), few epochs, a per-class training subset on isic9 and three of
# the thesis's six noise levels there. Measured 2026-12-02 on an idle 2-core EPYC: with 20 isic9 images
# per class and 2 epochs the whole bench took 6.2 min (isic9 robustness 166 s, interpret 97 s), but the
# clean isic9 model reached only 0.30 top-1 and 2 test images were confidently right, too few for the
# background test; hence 50 per class and 3 epochs.
PROFILES = {
    "synth": dict(
        data=dict(size=32),
        training=dict(arch="resnet18", schedule="sgdr_dlr_clm", lr=0.05, epochs=3, batch_size=32, snapshots=0),
        robustness=dict(),
    ),
    "isic9": dict(
        data=dict(size=128, val_frac=0.1),
        training=dict(
            arch="efficientnet_lite0",
            weights="imagenet",
            schedule="sgdr_dlr",
            lr=0.05,
            epochs=3,
            batch_size=32,
            snapshots=0,
        ),
        robustness=dict(train_per_class=50, noise_levels=[0.01, 0.05, 0.15]),
    ),
}
INTERPRET = dict(seeds=3, top_pairs=3, per_pair=4, train_per_class=50)


def _markdown(rows: list[dict]) -> str:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += [
        "| " + " | ".join(f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |" for r in rows
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="synth,isic9", help="comma list of synth,isic9")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "robustness")
    ap.add_argument("--no-robustness", action="store_true", help="only the interpret flow (with isic9 listed)")
    args = ap.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{out}/mlflow.db"
    os.environ["SKINFLOW_DATA_ROOT"] = str(out / "data")

    import torch

    from flows.interpret import interpret_flow
    from flows.robustness import robustness_flow
    from flows.runtime import local_flow_settings
    from ml.data.config import DataConfig
    from ml.data.synth import SynthConfig, generate
    from ml.interpret.config import InterpretConfig
    from ml.robust.config import RobustnessConfig
    from ml.train.config import LRFindConfig, TrainConfig

    results: dict = {
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "load_at_start": os.getloadavg()},
        "runs": {},
    }
    md = []
    started = time.perf_counter()
    with local_flow_settings():
        for name in [d for d in args.datasets.split(",") if d and not args.no_robustness]:
            if name == "isic9" and not ISIC9.is_dir():
                print(f"SKIP isic9: {ISIC9} not found")
                continue
            p = PROFILES[name]
            if name == "synth":
                source = out / "work" / "synth"
                if not source.is_dir():
                    generate(source, SynthConfig(per_class=60, size=64, seed=0), progress=False)  # the demo's set
            else:
                source = ISIC9
            t0 = time.perf_counter()
            summary = robustness_flow(
                data=DataConfig(source=str(source), **p["data"]),
                training=TrainConfig(progress=False, **p["training"]),
                robustness=RobustnessConfig(**p["robustness"]),
                lr_find=LRFindConfig(**p.get("lr_find", {})),
                out_dir=str(out / name / "robustness"),
            )
            summary["wall_seconds"] = time.perf_counter() - t0
            results["runs"][f"robustness/{name}"] = summary
            md += [
                f"### robustness, {name} (MLflow run {summary['run_id']}, {summary['eval_split']} split, "
                f"lr {summary['lr']:.3g}, {summary['wall_seconds']:.0f} s)",
                "",
                _markdown(summary["table"]),
                "",
            ]
            print("\n".join(md[-4:]), flush=True)
        if "isic9" in args.datasets and ISIC9.is_dir():
            p = PROFILES["isic9"]
            t0 = time.perf_counter()
            summary = interpret_flow(
                data=DataConfig(source=str(ISIC9), **p["data"]),
                training=TrainConfig(progress=False, **p["training"]),
                interpret=InterpretConfig(**INTERPRET),
                out_dir=str(out / "isic9" / "interpret"),
            )
            summary["wall_seconds"] = time.perf_counter() - t0
            results["runs"]["interpret/isic9"] = summary
            bg = summary["background_test"]
            md += [
                f"### interpret, isic9 (MLflow run {summary['run_id']}, seeds {summary['seeds']}, "
                f"{summary['wall_seconds']:.0f} s, Grad-CAM layer {summary['cam_layer']})",
                "",
                _markdown([{"confused pair (errors per run, mean ± std)": t} for t in summary["confused_pairs"]]),
                "",
                f"background test: {bg['n_confident']} confident correct images, prediction change rate "
                f"{bg['change_rate']}, true-class probability {bg['prob_before']} -> {bg['prob_after']}",
                "",
                "galleries: "
                + ", ".join(f"runs:/{summary['run_id']}/plots/{Path(g).name}" for g in summary["galleries"]),
                "",
            ]
            print("\n".join(md[-8:]), flush=True)
    results["machine"]["load_at_end"] = os.getloadavg()
    results["total_seconds"] = time.perf_counter() - started
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "results.md").write_text("\n".join(md) + "\n")
    print(f"total {results['total_seconds']:.0f} s; {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
