"""The augcheck flow end to end on the synthetic default, CPU profile, timed.

Generates (once) an SD-198-style synthetic set with the two pooled labels (``ml.data.synth``,
acne and blister, ``--per-class`` images each, 64 px), then runs ``flows.augcheck.augcheck_flow``
with local stores under ``--work-dir`` (data root + sqlite MLflow, ephemeral Prefect API): the
ProGAN to 32 px on the pool, N synthetic images as a new dataset version, K binary classifiers,
estimates, memorisation test, train-on-synthetic, control, verdict.

Run: ``make bench-augcheck``. Writes
``<work-dir>/bench_augcheck.json``; ``--results bench/RESULTS.md`` replaces the section between
``<!-- augcheck:start -->`` and ``<!-- augcheck:end -->`` (other sections kept).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from bench.common import (
    command_line,
    configure_torch,
    fmt,
    load_average,
    load_remark,
    machine_description,
    md_table,
    replace_section,
    write_json,
)

REPO = Path(__file__).resolve().parents[1]

THESIS = [(88.9, 58.75, 41.25), (88.4, 22.50, 77.50), (90.4, 45.00, 55.00), (88.5, 57.50, 42.50)]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-class", type=int, default=200, help="Synthetic images per pooled label.")
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument(
        "--fade-iters",
        type=int,
        default=None,
        help="ProGAN fade-in iterations per stage (default: ProGANConfig's, the CPU profile).",
    )
    p.add_argument(
        "--stable-iters", type=int, default=None, help="ProGAN stable iterations per stage (default: ProGANConfig's)."
    )
    p.add_argument("--batch-size", type=int, default=None, help="ProGAN batch size (default: ProGANConfig's).")
    p.add_argument("--n-synthetic", type=int, default=400)
    p.add_argument("--classifiers", type=int, default=4)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: usable cores)")
    p.add_argument("--work-dir", type=Path, default=REPO / "bench" / "out" / "augcheck")
    p.add_argument("--results", type=Path, default=None, help="Update this RESULTS.md's augcheck section.")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ["SKINFLOW_DATA_ROOT"] = str(work / "data")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work}/mlflow.db"
    torch_settings = configure_torch(args.threads)
    machine = machine_description(torch_settings)

    from ml.data.synth import SynthConfig, generate

    per_class = args.per_class
    source = work / f"synth_acne_blister_{per_class}"
    if not (source / "synth_meta.csv").is_file():
        generate(
            source,
            SynthConfig(class_priors={"acne": 0.5, "blister": 0.5}, total=2 * per_class, size=64, seed=0),
            progress=False,
        )

    from flows.runtime import local_flow_settings
    from ml.data.config import DataConfig
    from ml.gan.config import AugCheckConfig, ProGANConfig

    data = DataConfig(source=str(source), test_frac=0.2)
    check = AugCheckConfig(
        ratio=args.ratio,
        n_synthetic=args.n_synthetic,
        classifiers=args.classifiers,
    )
    given = {"fade_iters": args.fade_iters, "stable_iters": args.stable_iters, "batch_size": args.batch_size}
    gan = ProGANConfig(
        device="cpu", checkpoint_dir=str(work / "gan_checkpoints"), **{k: v for k, v in given.items() if v is not None}
    )
    started = time.perf_counter()
    with local_flow_settings():
        from flows.augcheck import augcheck_flow

        out = augcheck_flow(data=data, check=check, gan=gan, out_dir=str(work / "outputs"))
    wall = time.perf_counter() - started
    result = {
        "command": command_line(argv if argv is not None else None),
        "machine": machine,
        "load_average_at_end": load_average(),
        "wall_seconds": wall,
        "data": data.model_dump(mode="json"),
        "check": check.to_dict(),
        "gan_config": gan.to_dict(),
        "flow": out,
    }
    write_json(result, work / "bench_augcheck.json")
    body = render(result)
    print(body)
    if args.results:
        args.results.write_text(
            replace_section(args.results.read_text() if args.results.exists() else "", "augcheck", body)
        )
    return 0


def render(r: dict) -> str:
    f, m = r["flow"], r["machine"]
    la, lb = r["check"]["label_a"], r["check"]["label_b"]
    rows = [
        [
            str(t["run"]),
            f"{t['binary model accuracy']:.1f}%",
            f"{t[f'{la} estimate']:.2f}%",
            f"{t[f'{lb} estimate']:.2f}%",
        ]
        for t in f["table"]
    ]
    thesis = [[str(i + 1), f"{a}%", f"{e1}%", f"{e2}%"] for i, (a, e1, e2) in enumerate(THESIS)]
    s, c, mem, t = f["summary"], f["control"], f["memorisation"], f["train_on_synthetic"]
    g = f["gan"]
    lines = [
        "## Augmentation check (ProGAN post-hoc, `make bench-augcheck`)",
        "",
        f"Command: `{r['command']}`; {m['cpu_model']}, {m['usable_cores']} cores, torch threads "
        f"{m['torch_threads']}, load average at start {m['load_average_at_start']} and at end "
        f"{r['load_average_at_end']}"
        f" ({load_remark(m['load_average_at_start'], r['load_average_at_end'], cores=m['usable_cores'])}), "
        f"git {m['git_commit'][:10]}, {m['date']}.",
        "",
        f"Whole flow: **{r['wall_seconds'] / 60:.1f} min** (ProGAN {g['wall_seconds'] / 60:.1f} min to "
        f"{g['resolution']} px, {g['iterations']} iterations, {g['precision']}, "
        f"{g['generator_parameters'] / 1e6:.2f}M G parameters).",
        "",
        f"Pool r = {f['ratio']:g} of {la}; {r['check']['n_synthetic']} samples; {len(f['table'])} binary "
        f"classifiers ({r['check']['arch']}, {r['check']['epochs']} epochs).",
        "",
        md_table(["run", "binary model accuracy (val)", f"{la} estimate", f"{lb} estimate"], rows),
        "",
        "Thesis (Exmedio, acne + blister at 50/50):",
        "",
        md_table(["run", "binary model accuracy", "label-1 estimate", "label-2 estimate"], thesis),
        "",
        f"Mean estimate {fmt(s['mean'])} (std {fmt(s['std'])}, range {fmt(s['min'])}..{fmt(s['max'])}), "
        f"error vs r {fmt(s['error'], '+.3f')}; thesis: mean 0.459, std 0.168, range 0.225..0.588.",
        "",
        f"Control (real held-out images mixed at r): {fmt(c['mixed']['mean'])}; only {la}: "
        f"{fmt(c['only_a']['mean'])}; only {lb}: {fmt(c['only_b']['mean'])}.",
        "",
        f"Memorisation: {mem['memorised_share']:.1%} of samples closer to a training image than the 5% quantile "
        f"of training-to-training NN distances (expected ~5% for novel samples); median distance ratio "
        f"synthetic/train {fmt(mem['distance_ratio'], '.2f')}.",
        "",
        f"Train on synthetic, test on real: accuracy {fmt(t['tstr_accuracy'])} (real-trained "
        f"{fmt(t['trtr_accuracy'])}).",
        "",
        f"Verdict: **{f['verdict']}**" + (": " + "; ".join(f["reasons"]) if f["reasons"] else "."),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
