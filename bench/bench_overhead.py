"""Orchestration overhead: Prefect + MLflow (+ Ray) around the same training, as a share of
the flow's wall time, on the demo profile.

Side by side in one process, interleaved (bare, flow, bare, flow, ...):
- bare:   ml/ only — split, cache, fit, evaluate (what the flow computes). The manifest is built
          once beforehand, as the flow's manifest task is a cache hit on an unchanged tree, so
          neither side re-hashes the files;
- flow:   retrain flow with tune=False, validate=False (Prefect tasks, MLflow run with params,
          per-epoch metrics, plots, model + snapshots, held-out predictions, registry version,
          promotion gate);
- tune:   tune flow with one trial (LR range test skipped via a fixed bracket) vs a bare fit
          of the same trial configuration: the Ray Tune + MLflow child-run overhead.
The share is median(flow - bare) / median(flow) over the paired repeats (pairs cancel slow
drifts of a shared machine). A breakdown of the last orchestrated run by Prefect task (read
back from the Prefect API) shows where the extra time goes. Start-up of Prefect's ephemeral
server and ``ray.init`` happen once per process and are reported separately.
Usage: ``python -m bench.bench_overhead [--repeats 5] [--results bench/RESULTS.md]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import configure_torch, machine_description, replace_section

SECTION = "overhead"


def _demo_profile() -> dict:
    """The demo's CPU profile (flows/demo.py), so that the share is measured where it is promised."""
    from flows.demo import PROFILES

    cpu = PROFILES["cpu"]
    return dict(
        per_class=cpu["synth"]["per_class"],
        synth_size=cpu["synth"]["size"],
        size=cpu["data"]["size"],
        epochs=cpu["training"]["epochs"],
        batch_size=cpu["training"]["batch_size"],
        lr=0.01,
        schedule="sgdr_dlr_clm",
    )


PROFILE = _demo_profile()


def bare_run(manifest, cache_root: Path, epochs: int | None = None) -> float:
    """What the retrain flow computes, with no orchestration or tracking."""
    from ml.data.cache import build_cache
    from ml.data.split import split_manifest
    from ml.train import recipes
    from ml.train.config import TrainConfig
    from ml.train.loop import fit

    t0 = time.perf_counter()
    m = split_manifest(manifest, val_frac=0.15, test_frac=0.2, seed=0)
    cache = build_cache(m, PROFILE["size"], cache_root)
    cfg = TrainConfig(
        schedule=PROFILE["schedule"],
        lr=PROFILE["lr"],
        epochs=epochs or PROFILE["epochs"],
        batch_size=PROFILE["batch_size"],
        progress=False,
    )
    result = fit(cache.subset("train"), cache.subset("val"), cache.classes, cfg)
    recipes.evaluate(result, cache.subset("test"))
    return time.perf_counter() - t0


def task_breakdown() -> dict:
    """Seconds per task of the latest flow run, and the flow run's own time, from the Prefect API."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    async def read() -> dict:
        async with get_client() as client:
            [run] = await client.read_flow_runs(limit=1, sort=FlowRunSort.START_TIME_DESC)
            tasks = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
            per_task: dict[str, float] = {}
            for t in tasks:
                name = t.name.rsplit("-", 1)[0]
                per_task[name] = per_task.get(name, 0.0) + t.total_run_time.total_seconds()
            return {"flow_run_seconds": run.total_run_time.total_seconds(), "tasks": per_task}

    return asyncio.run(read())


def flow_run(data: str, out: Path, epochs: int | None = None) -> float:
    from flows.retrain import retrain_flow
    from ml.data.config import DataConfig
    from ml.train.config import TrainConfig

    t0 = time.perf_counter()
    retrain_flow(
        data=DataConfig(source=data, size=PROFILE["size"]),
        training=TrainConfig(
            lr=PROFILE["lr"],
            epochs=epochs or PROFILE["epochs"],
            batch_size=PROFILE["batch_size"],
            schedule=PROFILE["schedule"],
        ),
        tune=False,
        validate_data=False,
        out_dir=str(out),
    )
    return time.perf_counter() - t0


def bare_trial(data: str, cache_root: Path) -> float:
    from ml.data.cache import build_cache
    from ml.data.manifest import build_manifest
    from ml.data.split import split_manifest
    from ml.train.config import TrainConfig
    from ml.train.loop import fit

    m = split_manifest(build_manifest(data), val_frac=1 / 6, test_frac=0.0, seed=0)
    cache = build_cache(m, PROFILE["size"], cache_root)
    cfg = TrainConfig(
        schedule="sgdr",
        lr=PROFILE["lr"],
        epochs=PROFILE["epochs"],
        batch_size=PROFILE["batch_size"],
        snapshots=0,
        progress=False,
    )
    t0 = time.perf_counter()
    fit(cache.subset("train"), cache.subset("val"), cache.classes, cfg)
    return time.perf_counter() - t0


def tune_run(data: str, out: Path, name: str) -> float:
    from flows.tune import tune_flow
    from ml.data.config import DataConfig
    from ml.train.config import SweepConfig, TrainConfig

    t0 = time.perf_counter()
    tune_flow(
        data=DataConfig(source=data, size=PROFILE["size"]),
        sweep=SweepConfig(schedules=["sgdr"], amp=[False], epochs=PROFILE["epochs"], cpus_per_trial=2, name=name),
        training=TrainConfig(batch_size=PROFILE["batch_size"]),
        lr_bracket=[PROFILE["lr"] * 0.999, PROFILE["lr"]],
        out_dir=str(out),
    )
    return time.perf_counter() - t0


def empty_flow_seconds(repeats: int = 3) -> dict[str, float]:
    """Wall time of a flow with one trivial task, heartbeats off (as run here) and on (Prefect's
    default 180 s): the fixed cost of a flow run and of joining the heartbeat thread."""
    from prefect import flow, task
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    @task
    def one() -> int:
        return 1

    @flow
    def empty() -> int:
        return one()

    out = {}
    for label, value in (("heartbeats_off", None), ("heartbeats_on", 180)):
        with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: value}):
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                empty()
                times.append(time.perf_counter() - t0)
        out[label] = statistics.median(times)
    return out


def main() -> int:
    from flows.runtime import local_flow_settings

    with local_flow_settings() as changed:
        if changed:
            print(f"in-process flow settings (as the CLI and demo use them): {changed}", flush=True)
        return _main()


def _main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--results", type=Path, default=None, help="update this RESULTS.md section")
    ap.add_argument(
        "--long-epochs",
        type=int,
        default=45,
        help="also measure the same flow at this many epochs (fixed costs vs training length); 0: skip",
    )
    ap.add_argument("--long-repeats", type=int, default=2)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="skinflow-overhead-"))
    os.environ["SKINFLOW_DATA_ROOT"] = str(work / "data")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work}/mlflow.db"
    torch_settings = configure_torch(None)
    from ml.data.manifest import build_manifest
    from ml.data.synth import SynthConfig, generate
    from ml.settings import get_settings

    get_settings.cache_clear()
    data = str(work / "synth")
    generate(data, SynthConfig(per_class=PROFILE["per_class"], size=PROFILE["synth_size"], seed=0), progress=False)

    t0 = time.perf_counter()
    flow_run(data, work / "warm")  # starts the ephemeral Prefect server, warms caches
    startup = time.perf_counter() - t0
    manifest = build_manifest(data)
    bare_run(manifest, work / "bare-cache")  # warm-up: decoded image cache, allocator
    bare, flow = [], []
    for i in range(args.repeats):
        bare.append(bare_run(manifest, work / "bare-cache"))
        flow.append(flow_run(data, work / f"flow{i}"))
        print(f"repeat {i}: bare {bare[-1]:.1f}s  flow {flow[-1]:.1f}s", flush=True)
    breakdown = task_breakdown()  # of the last retrain run, before any other flow runs
    long_bare, long_flow = [], []
    for i in range(args.long_repeats if args.long_epochs else 0):
        long_bare.append(bare_run(manifest, work / "bare-cache", args.long_epochs))
        long_flow.append(flow_run(data, work / f"long{i}", args.long_epochs))
        print(
            f"{args.long_epochs} epochs, repeat {i}: bare {long_bare[-1]:.1f}s  flow {long_flow[-1]:.1f}s", flush=True
        )
    empty = empty_flow_seconds()
    diffs = [f - b for b, f in zip(bare, flow)]
    res = {
        "profile": PROFILE,
        "warm_up_flow_seconds": startup,
        "bare": bare,
        "flow": flow,
        "overhead_seconds": statistics.median(diffs),
        "overhead_share": statistics.median(diffs) / statistics.median(flow),
        "breakdown": breakdown,
        "empty_flow_seconds": empty,
    }
    if long_flow:
        long_diffs = [f - b for b, f in zip(long_bare, long_flow)]
        res["long"] = {
            "epochs": args.long_epochs,
            "bare": long_bare,
            "flow": long_flow,
            "overhead_seconds": statistics.median(long_diffs),
            "overhead_share": statistics.median(long_diffs) / statistics.median(long_flow),
        }
    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    res["ray_init_seconds"] = time.perf_counter() - t0
    trial_bare, trial_tune = [], []
    for i in range(args.repeats):
        trial_bare.append(bare_trial(data, work / "bare-cache"))
        trial_tune.append(tune_run(data, work / f"tune{i}", f"bench-{i}"))
        print(f"repeat {i}: bare fit {trial_bare[-1]:.1f}s  tune flow {trial_tune[-1]:.1f}s", flush=True)
    tune_diffs = [t - b for b, t in zip(trial_bare, trial_tune)]
    res.update(
        trial_bare=trial_bare,
        trial_tune=trial_tune,
        tune_overhead_seconds=statistics.median(tune_diffs),
        tune_overhead_share=statistics.median(tune_diffs) / statistics.median(trial_tune),
    )
    ray.shutdown()

    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "bench_overhead.json").write_text(json.dumps(res, indent=2))
    m = machine_description(torch_settings)
    res["machine"] = m
    text = render(
        res,
        f"{m['cpu_model']}, {m['usable_cores']} cores, torch {m['torch']} ({m['torch_threads']} threads, "
        f"flush-denormal {m['flush_denormal']}), load average at start {m['load_average_at_start']}, "
        f"{m['date']}, commit {m['git_commit'][:10]}",
    )
    print(text)
    if args.results:
        old = args.results.read_text() if args.results.exists() else "# Benchmark results\n"
        args.results.write_text(replace_section(old, SECTION, text))
    return 0


def render(res: dict, machine: str) -> str:
    med = statistics.median
    n = len(res["bare"])
    lines = [
        "## Orchestration overhead (retrain flow, demo profile)",
        "",
        f"Command: `make bench-overhead` (`python -m bench.bench_overhead --repeats {n}"
        " --results bench/RESULTS.md`). Machine: " + machine,
        "",
        f"Profile: {res['profile']}. {n} interleaved pairs (bare, orchestrated); overhead = median of the "
        "paired differences, share = that / median orchestrated wall time. Bare = split, cache, fit, "
        "evaluate with the manifest built once beforehand (the flow's manifest task is a cache hit).",
        "",
        "| what | bare ml/ (s) | orchestrated (s) | overhead (s) | overhead share | target |",
        "|---|---|---|---|---|---|",
        f"| retrain flow (Prefect tasks + MLflow run, model, predictions, registry, gate) vs bare split/cache/fit/evaluate"
        f" | {med(res['bare']):.2f} | {med(res['flow']):.2f} | {res['overhead_seconds']:.2f}"
        f" | {res['overhead_share']:.1%} | <= 5% |",
    ]
    if res.get("long"):
        lg = res["long"]
        lines.append(
            f"| the same, {lg['epochs']} epochs ({len(lg['bare'])} pairs) | {med(lg['bare']):.2f} | {med(lg['flow']):.2f}"
            f" | {lg['overhead_seconds']:.2f} | {lg['overhead_share']:.1%} | - |"
        )
    lines.append(
        f"| tune flow, 1 Ray Tune trial (+ MLflow child run) vs bare fit of the trial config"
        f" | {med(res['trial_bare']):.2f} | {med(res['trial_tune']):.2f} | {res['tune_overhead_seconds']:.2f}"
        f" | {res['tune_overhead_share']:.1%} | - |"
    )
    lines += [
        "",
        "Per-pair seconds (bare / orchestrated): "
        + ", ".join(f"{b:.2f} / {f:.2f}" for b, f in zip(res["bare"], res["flow"]))
        + ".",
    ]
    if res.get("breakdown"):
        b = res["breakdown"]
        lines += [
            "",
            f"Where the last orchestrated run spent its {b['flow_run_seconds']:.2f} s (Prefect task run "
            "times read back from the API; `train-model` includes the per-epoch MLflow rows and progress bars, "
            "`log-training-run` the plots, params, dataset input, pt2 model, weights and held-out predictions):",
            "",
            "| task | seconds |",
            "|---|---|",
        ]
        lines += [f"| {name} | {sec:.3f} |" for name, sec in sorted(b["tasks"].items(), key=lambda kv: -kv[1])]
        outside = b["flow_run_seconds"] - sum(b["tasks"].values())
        lines += [f"| (flow engine between tasks) | {outside:.3f} |"]
    if res.get("empty_flow_seconds"):
        e = res["empty_flow_seconds"]
        lines += [
            "",
            f"A flow with one trivial task takes {e['heartbeats_off']:.2f} s with Prefect's flow-run heartbeats "
            f"off, as the CLI, the demo and this benchmark run in-process flows on the ephemeral API "
            f"(`flows/runtime.py`), and {e['heartbeats_on']:.2f} s with them on (Prefect's default, kept when "
            "`PREFECT_API_URL` is set): Prefect 3.9 joins its heartbeat thread, which sleeps in 1 s steps, at the "
            "end of every flow and subflow run.",
        ]
    lines += [
        "",
        f"Once per process, not in the shares: first flow run incl. Prefect ephemeral server start "
        f"{res['warm_up_flow_seconds']:.1f}s; `ray.init` {res['ray_init_seconds']:.1f}s.",
        "",
        (
            "Meets the 5% target on the demo profile."
            if res["overhead_share"] <= 0.05
            else f"**Above the 5% target on the demo profile**: the orchestrated run costs {res['overhead_seconds']:.2f}s "
            "more than the bare one. The cost is per run, not per epoch"
            + (
                f" (the {res['long']['epochs']}-epoch row: {res['long']['overhead_seconds']:.2f}s, "
                f"{res['long']['overhead_share']:.1%})"
                if res.get("long")
                else ""
            )
            + ": the CPU-bound part is drawing the four PNGs (~0.4 s) and exporting the pt2 model (~0.4 s, more "
            "when a full garbage collection falls into it), the rest Prefect task runs and the ephemeral server "
            "sharing the 2 cores with training."
        ),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
