"""Monitor-flow cost: seconds of the ``ml/monitor`` steps that the monitor flow's tasks call, each
timed, for a reference of N images against batches of growing size, at one resolution.

Set-up (not timed): a synthetic SD-198-style set (``ml/data/synth.py``) of ``reference + 100``
images at ``--size`` px, ``reference`` of them (drawn at random) recorded as the model's train split
and the rest as its val split (BBSE's confusion matrix); a ResNet-18 at random initialisation
logged as an MLflow run (sqlite store in a temp folder) with its weights, training digests and
dataset source, as a training run records them; batches from the same generator with other seeds.
Timed, without Prefect and MLflow: model and reference loading and the reference's description
(once), then per batch: reading it (each image decoded once, as the flow does), describing it, BBSE,
the Evidently report with its two EmbeddingsDrift TSNE plots and the decision, the HTML.
``OMP_NUM_THREADS=1`` is set before numpy loads.

Run: ``make bench-monitor`` or ``python -m bench.bench_monitor --batches 100 250 500 --results bench/RESULTS.md``.
Writes ``bench/out/bench_monitor.json``; ``--results`` replaces the ``monitor`` section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.common import (
    command_line,
    fmt,
    load_average,
    load_remark,
    machine_description,
    md_table,
    replace_section,
    write_json,
)

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]

SECTION = "monitor"
DEFAULT_JSON = REPO / "bench" / "out" / "bench_monitor.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=64, help="image side (px)")
    p.add_argument("--reference", type=int, default=500, help="reference (train split) images")
    p.add_argument("--batches", type=int, nargs="+", default=[100, 250, 500, 1000], help="batch sizes to time")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON)
    p.add_argument("--results", type=Path, default=None, help="RESULTS.md to update")
    return p.parse_args(argv)


def _model_run(root: Path, source: Path, n_train: int, size: int) -> str:
    """An MLflow run holding what a training run records: weights + meta, digests, dataset input."""
    import mlflow
    import torch

    from ml.data.manifest import build_manifest
    from ml.data.synth import LABELS
    from ml.tracking.models import log_model_weights, log_training_digests, model_meta
    from ml.tracking.runs import log_dataset_input
    from ml.train.models import build_model

    manifest = build_manifest(source)
    records = manifest.records.copy()
    import numpy as np

    order = np.random.default_rng(0).permutation(len(records))  # every class in both splits
    records["split"] = np.where(np.isin(np.arange(len(records)), order[:n_train]), "train", "val")
    torch.manual_seed(0)
    with mlflow.start_run() as run:
        meta = model_meta("resnet18", list(LABELS), 0, {"norm": [[0.5] * 3, [0.25] * 3], "size": size})
        log_model_weights(run.info.run_id, build_model("resnet18", len(LABELS)).state_dict(), [], meta)
        log_training_digests(run.info.run_id, records, manifest.version)
        log_dataset_input(manifest.version, "dataset", manifest.source, records[["path", "label", "split"]])
    return f"runs:/{run.info.run_id}/model"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from ml.data.synth import SynthConfig, generate
    from ml.settings import get_settings

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["SKINFLOW_DATA_ROOT"] = str(root / "data")
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root}/mlflow.db"
        get_settings.cache_clear()
        from ml.tracking.runs import configure_mlflow

        configure_mlflow(os.environ["MLFLOW_TRACKING_URI"])
        per_class = -(-(args.reference + 100) // 10)
        generate(root / "reference", SynthConfig(per_class=per_class, size=args.size, seed=0), progress=False)
        (root / "reference" / "synth_meta.csv").unlink()
        model_uri = _model_run(root, root / "reference", args.reference, args.size)
        rows = run_steps(root, model_uri, args)
    meta = {
        "size": args.size,
        "machine": machine_description({}),
        "command": command_line([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
    }
    text = markdown(rows, meta)
    print("\n" + text)
    write_json({"rows": rows, **meta}, args.json)
    if args.results is not None:
        old = args.results.read_text() if args.results.is_file() else ""
        args.results.write_text(replace_section(old, SECTION, text))
    return 0


def run_steps(root: Path, model_uri: str, args: argparse.Namespace) -> list[dict]:
    """The flow's steps without Prefect and MLflow, each timed (seconds per step per batch size)."""
    import numpy as np

    from ml.data.synth import SynthConfig, generate
    from ml.monitor.batch import load_batch
    from ml.monitor.describe import DecodedImages, describe
    from ml.monitor.drift import measure_drift, save_html
    from ml.monitor.label_shift import bbse_bootstrap
    from ml.monitor.model import load_monitored_model
    from ml.monitor.policy import DriftPolicy
    from ml.monitor.reference import load_reference

    policy = DriftPolicy.load()
    t0 = time.perf_counter()
    model = load_monitored_model(model_uri)
    reference = load_reference(model, max_images=args.reference)
    t1 = time.perf_counter()
    ref, val = describe(reference.records, model), describe(reference.validation, model)
    t2 = time.perf_counter()
    fixed = {"model_and_reference_s": t1 - t0, "describe_reference_s": t2 - t1}
    print(f"reference: {fixed}", flush=True)
    rows = []
    for n in args.batches:
        batch_dir = root / f"steps{n}"
        generate(batch_dir, SynthConfig(per_class=-(-n // 10), size=args.size, seed=100 + n), progress=False)
        (batch_dir / "synth_meta.csv").unlink()
        load = load_average()
        times = {}
        start = time.perf_counter()
        images = DecodedImages(model.size)  # as the flow: each batch image decoded once, while it is read
        batch = load_batch(batch_dir, None, model.classes, on_image=images)
        times["load_batch_s"] = time.perf_counter() - start
        start = time.perf_counter()
        cur = describe(batch.records, model, images=images)
        times["describe_batch_s"] = time.perf_counter() - start
        start = time.perf_counter()
        est = bbse_bootstrap(
            val.label_indices(),
            val.probs.argmax(1),
            cur.probs.argmax(1),
            len(model.classes),
            np.bincount(ref.label_indices(), minlength=len(model.classes)) / len(ref),
            n_boot=policy.n_boot,
            level=policy.prior_level,
        )
        times["bbse_s"] = time.perf_counter() - start
        start = time.perf_counter()
        summary, snapshot = measure_drift(ref, cur, policy, est, render=True)
        times["report_and_decision_s"] = time.perf_counter() - start
        start = time.perf_counter()
        save_html(snapshot, summary, root / f"report{n}.html")
        times["html_s"] = time.perf_counter() - start
        seconds = sum(times.values()) + sum(fixed.values())
        rows.append(
            {
                "batch": len(cur),
                "reference": len(ref),
                "validation": len(val),
                "seconds": seconds,
                "verdict": summary["verdict"],
                "load_average": load,
                **fixed,
                **times,
            }
        )
        print(f"batch {len(cur)}: {seconds:.1f} s {times}", flush=True)
        write_json({"rows": rows, "partial": True}, args.json)
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    table = md_table(
        [
            "batch images",
            "reference images",
            "validation images",
            "seconds",
            "s per 100 batch images",
            "verdict",
            "load avg (1 min) at start",
        ],
        [
            [
                str(r["batch"]),
                str(r["reference"]),
                str(r["validation"]),
                fmt(r["seconds"], ".1f"),
                fmt(100 * r["seconds"] / r["batch"], ".1f"),
                r["verdict"],
                fmt((r["load_average"] or [None])[0], ".1f"),
            ]
            for r in rows
        ],
    )
    m = meta["machine"]
    head = [
        "## Monitor flow cost",
        "",
        f"`{meta['command']}` at {meta['size']} px, {m['cpu_model']} "
        f"({m['usable_cores']} usable cores), OMP_NUM_THREADS={m['omp_num_threads_env']}, commit "
        f"{m['git_commit']}, {m['date']}.",
        "",
        table,
        "",
    ]
    steps = [
        "model_and_reference_s",
        "describe_reference_s",
        "load_batch_s",
        "describe_batch_s",
        "bbse_s",
        "report_and_decision_s",
        "html_s",
    ]
    head += [
        md_table(["batch images", *steps], [[str(r["batch"]), *(fmt(r[k], ".1f") for k in steps)] for r in rows]),
        "",
        "The ml/monitor steps the flow's tasks call, each timed, without Prefect and MLflow "
        "(model and reference loading from the MLflow run, descriptors + embeddings + predictions of the "
        "reference and the model's 100 validation images, done once and counted in every row; then per "
        "batch: reading it (each image decoded once, its descriptors and model input kept), describing it, "
        "BBSE with 400 bootstraps, the Evidently report with its two EmbeddingsDrift TSNE plots and the "
        "decision, the HTML).",
    ]
    remark = load_remark(*(r["load_average"] for r in rows), cores=m["usable_cores"])
    head += ["", f"Load: {remark[0].upper() + remark[1:]}. The growth with batch size is what the table shows."]
    return "\n".join(head)


if __name__ == "__main__":
    sys.exit(main())
