"""Pretrained-backbone benchmark: the thesis's scheme fine-tuning ImageNet EfficientNet-Lite on real
dermoscopy images (isic9), against the SGD baseline, a linear probe, and a larger backbone.

One process, one machine, interleaved by seed (every variant of seed 0, then seed 1, ...):

1. data: isic9's shipped train/test folders; val carved out of train by ``split_manifest`` (stable
   hash buckets); a class-balanced training subset (``--per-class``, the first images of each class
   in manifest order, the same for every seed) and a capped validation subset; test = all shipped
   test images. Decoded once into the uint8 cache at ``--size``;
2. a linear probe on the frozen backbone's pooled features (the floor fine-tuning must clear);
3. one LR range test per optimiser family (``ml.train.schedules.LR_FAMILIES``: SGD, SGD with DLR
   groups, Adam), on the pretrained model, as the tune flow runs them; its ``chosen`` LR is each
   variant's (head) LR. ``sgd`` is the thesis baseline: 0.01 with step decay;
4. every variant x {fp32, AMP} x seed: per-epoch validation metrics and wall time, test balanced
   accuracy and macro-F1 (snapshot ensemble for SGDR variants);
5. eta per seed = time for that seed's sgd fp32 run to reach its best validation balanced accuracy /
   time for the variant to reach it;
6. the best variant of the main backbone (by mean test balanced accuracy) again on
   ``--compare-arch`` (default efficientnet_lite2), with that backbone's own range test;
7. a ``pretrained`` section in ``bench/RESULTS.md`` + raw JSON in ``bench/out/bench_pretrained.json``.

Run: ``make bench-pretrained`` (about 40-60 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.bench_train import cpu_precision
from bench.common import (
    BASELINE_LR,
    command_line,
    configure_torch,
    load_average,
    machine_description,
    md_table,
    range_tests,
    replace_section,
    variant_lr,
    write_json,
)
from ml.eval.metrics import eta, time_to_target
from ml.train.config import VARIANTS

REPO = Path(__file__).resolve().parents[1]

PRECISIONS = ("fp32", "amp")
METRIC = "val_balanced_accuracy"
ISIC9 = REPO.parent / "shared" / "data" / "isic9"
DEFAULT_OUT = REPO / "bench" / "RESULTS.md"
SECTION = "pretrained"


@dataclass(frozen=True)
class Profile:
    arch: str = "efficientnet_lite0"
    compare_arch: str | None = "efficientnet_lite2"
    size: int = 128
    per_class: int | None = None  # None: the whole training folder (issue #25: the setting a team runs)
    val_per_class: int | None = None
    epochs: int = 7  # 1+2+4: three whole sgdr_dlr_clm cycles
    batch: int = 32
    seeds: tuple[int, ...] = (0, 1, 2)
    variants: tuple[str, ...] = VARIANTS
    precisions: tuple[str, ...] = PRECISIONS
    find_lr_iters: int = 60
    threads: int | None = None


def _log(msg: str) -> None:
    print(f"[bench-pretrained {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- data ---------------------------------------------------------------------------------------


def first_per_class(labels: Any, n: int | None) -> Any:
    """Indices of the first ``n`` records of each class (in the given order; all when ``n`` is None),
    in their original order: a class-balanced subset that does not depend on any seed."""
    import numpy as np

    keep = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        keep[idx if n is None else idx[:n]] = True
    return np.flatnonzero(keep)


def isic9_data(
    size: int, per_class: int | None, val_per_class: int | None, work: Path, root: Path = ISIC9
) -> dict[str, Any]:
    """isic9 at ``size``: {'train','val','test': (uint8 NHWC, labels), 'classes', 'info'}; the shipped
    test folder is the test split; train and val subsets are class-balanced caps (see module doc)."""
    from ml.data.cache import build_cache
    from ml.data.manifest import build_manifest
    from ml.data.split import split_manifest

    if not root.is_dir():
        raise SystemExit(f"bench-pretrained needs the real images at {root} (see its NOTICE.md)")
    manifest = split_manifest(build_manifest(root), val_frac=1 / 6, test_frac=0.0, seed=0)
    cache = build_cache(manifest, size, work / "cache", progress=True)
    data: dict[str, Any] = {}
    for split, cap in (("train", per_class), ("val", val_per_class), ("test", None)):
        images, labels = cache.subset(split)
        idx = first_per_class(labels, cap)
        data[split] = (images[idx], labels[idx])
    data["classes"] = cache.classes
    data["info"] = {
        "source": str(root),
        "manifest_version": manifest.version,
        "size": size,
        "counts": {s: int(len(data[s][1])) for s in ("train", "val", "test")},
        "train_per_class": {c: int((data["train"][1] == i).sum()) for i, c in enumerate(cache.classes)},
        "available_train": int(len(cache.subset("train")[1])),
    }
    return data


# --- runs ---------------------------------------------------------------------------------------


def train_config(profile: Profile, arch: str, variant: str, precision: str, lr: float | None, seed: int):
    from ml.train.config import TrainConfig

    return TrainConfig(
        arch=arch,
        weights="imagenet",
        schedule=variant,
        lr=lr,
        epochs=profile.epochs,
        batch_size=profile.batch,
        amp=precision == "amp",
        snapshots=3,
        seed=seed,
        progress=False,
    )


def run_probe(data: dict[str, Any], arch: str) -> dict[str, Any]:
    from ml.train.config import arch_family
    from ml.train.models import build_model
    from ml.train.probe import linear_probe, pooled_features
    from ml.train.transforms import PRETRAINED_STATS

    start = time.perf_counter()
    model = build_model(arch, len(data["classes"]), weights="imagenet")
    stats = PRETRAINED_STATS[arch_family(arch)]
    feats = {s: pooled_features(model, data[s][0], stats) for s in ("train", "test")}
    score = linear_probe((feats["train"], data["train"][1]), (feats["test"], data["test"][1]))
    return {"arch": arch, "test_balanced_accuracy": score, "wall_seconds": time.perf_counter() - start}


def run_range_tests(data: dict[str, Any], profile: Profile, arch: str, variants: Sequence[str]) -> dict[str, Any]:
    """One LR range test per optimiser family of ``variants`` (bf16 where AMP runs bf16)."""
    return range_tests(
        data["train"],
        data["classes"],
        variants,
        lambda v: train_config(profile, arch, v, "amp", None, seed=0),
        profile.find_lr_iters,
        log=lambda line: _log(f"{arch}: {line}"),
    )


_HISTORY_KEYS = ("epoch", "val_loss", "val_balanced_accuracy", "val_macro_f1", "epoch_seconds")


def run_one(
    data: dict[str, Any], profile: Profile, arch: str, variant: str, precision: str, lr: float, seed: int
) -> dict[str, Any]:
    from ml.eval.metrics import classification_metrics
    from ml.train.loop import fit

    row: dict[str, Any] = {"arch": arch, "variant": variant, "precision": precision, "seed": seed, "lr": lr}
    try:
        result = fit(
            data["train"], data["val"], data["classes"], train_config(profile, arch, variant, precision, lr, seed)
        )
    except (FloatingPointError, RuntimeError, ValueError) as exc:
        return {**row, "error": f"{type(exc).__name__}: {exc}"}
    test = classification_metrics(data["test"][1], result.predict_proba(data["test"][0]), data["classes"])
    history = [{k: float(r[k]) for k in _HISTORY_KEYS if k in r} for r in result.history]
    best = max((r[METRIC] for r in history if not math.isnan(r[METRIC])), default=math.nan)
    return {
        **row,
        "amp_dtype": result.amp_dtype,
        "history": history,
        "wall_seconds": sum(r["epoch_seconds"] for r in history),
        "best_val_balanced_accuracy": best,
        "final_val_balanced_accuracy": history[-1][METRIC],
        "test_balanced_accuracy": test["balanced_accuracy"],
        "test_macro_f1": test["macro_f1"],
        "test_models": max(1, len(result.snapshots)),
    }


def add_speedups(runs: list[dict[str, Any]]) -> None:
    """Per seed: target = best val balanced accuracy of that seed's sgd fp32 run on the same arch;
    each run's time to target and eta (None = never reached)."""
    for run in runs:
        base = next(
            (
                r
                for r in runs
                if "error" not in r
                and (r["arch"], r["seed"], r["variant"], r["precision"]) == (run["arch"], run["seed"], "sgd", "fp32")
            ),
            None,
        )
        if base is None or "error" in run:
            run["eta"] = run["time_to_target"] = None
            continue
        target = base["best_val_balanced_accuracy"]
        base_t = time_to_target(base["history"], target, METRIC)
        ttt = time_to_target(run["history"], target, METRIC)
        run["time_to_target"] = ttt
        run["eta"] = eta(base_t["seconds"] if base_t else None, ttt["seconds"] if ttt else None)


def _mean_sd(values: Sequence[float]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (arch, variant, precision): mean and sd over seeds, etas reached / seeds."""
    rows = []
    for key in dict.fromkeys((r["arch"], r["variant"], r["precision"]) for r in runs):
        group = [r for r in runs if (r["arch"], r["variant"], r["precision"]) == key]
        ok = [r for r in group if "error" not in r]
        row = {
            "arch": key[0],
            "variant": key[1],
            "precision": key[2],
            "seeds": len(group),
            "failed": len(group) - len(ok),
            "lr": group[0]["lr"],
            "amp_dtype": ok[0]["amp_dtype"] if ok else None,
        }
        for metric in ("best_val_balanced_accuracy", "test_balanced_accuracy", "test_macro_f1", "wall_seconds"):
            row[metric] = _mean_sd([r[metric] for r in ok])
        etas = [r["eta"] for r in ok if r.get("eta") is not None]
        row["eta"] = _mean_sd(etas)
        row["eta_reached"] = f"{len(etas)}/{len(ok)}"
        row["test_models"] = ok[0]["test_models"] if ok else None
        rows.append(row)
    return rows


def best_variant(summary: list[dict[str, Any]], arch: str) -> str:
    """The main backbone's variant with the highest mean test balanced accuracy (any precision)."""
    cands = [r for r in summary if r["arch"] == arch and r["test_balanced_accuracy"][0] is not None]
    return max(cands, key=lambda r: r["test_balanced_accuracy"][0])["variant"]


# --- report -------------------------------------------------------------------------------------


def _ms(pair: tuple[float | None, float | None], spec: str = ".3f") -> str:
    mean, sd = pair
    return "—" if mean is None else f"{mean:{spec}} ± {sd:{spec}}"


def summary_table(summary: list[dict[str, Any]]) -> str:
    rows = []
    for r in summary:
        prec = r["precision"] if r["precision"] == "fp32" else f"amp ({r['amp_dtype'] or '?'})"
        ens = f" (ens. {r['test_models']})" if (r["test_models"] or 1) > 1 else ""
        rows.append(
            [
                r["arch"].replace("efficientnet_", ""),
                r["variant"],
                prec,
                f"{r['lr']:.3g}",
                _ms(r["best_val_balanced_accuracy"]),
                _ms(r["test_balanced_accuracy"]) + ens,
                _ms(r["test_macro_f1"]),
                _ms(r["wall_seconds"], ".1f"),
                _ms(r["eta"], ".2f"),
                r["eta_reached"] + (f", {r['failed']} failed" if r["failed"] else ""),
            ]
        )
    return md_table(
        [
            "backbone",
            "variant",
            "precision",
            "LR",
            "best val bal. acc",
            "test bal. acc",
            "test macro-F1",
            "train+val s",
            "eta vs sgd fp32",
            "reached",
        ],
        rows,
    )


def reading(result: dict[str, Any]) -> list[str]:
    """A plain reading computed from the numbers."""
    summary, probe = result["summary"], result["probe"]["test_balanced_accuracy"]
    arch = result["profile"]["arch"]
    main = {(r["variant"], r["precision"]): r for r in summary if r["arch"] == arch}
    out = []
    base = main.get(("sgd", "fp32"))
    clm = main.get(("sgdr_dlr_clm", "fp32"))
    if base and clm and base["test_balanced_accuracy"][0] is not None and clm["test_balanced_accuracy"][0] is not None:
        d = clm["test_balanced_accuracy"][0] - base["test_balanced_accuracy"][0]
        verdict = "above" if d > 0 else "below"
        out.append(
            f"- The thesis's scheme (sgdr_dlr_clm, fp32) ends {abs(d):.3f} {verdict} the SGD baseline in "
            f"mean test balanced accuracy ({clm['test_balanced_accuracy'][0]:.3f} vs "
            f"{base['test_balanced_accuracy'][0]:.3f}; seeds' sd {clm['test_balanced_accuracy'][1]:.3f} and "
            f"{base['test_balanced_accuracy'][1]:.3f}); it reached the baseline's best validation score in "
            f"{clm['eta_reached']} seeds, mean eta {_ms(clm['eta'], '.2f')} (thesis, Exmedio: 1.32–2.33 "
            "without AMP)."
        )
    above = [
        f"{v} {p}"
        for (v, p), r in main.items()
        if r["test_balanced_accuracy"][0] is not None and r["test_balanced_accuracy"][0] > probe
    ]
    out.append(
        f"- Linear probe on the frozen {arch} features: {probe:.3f}. Fine-tuned rows above it: "
        + (", ".join(above) if above else "none")
        + "."
    )
    winner = result["best_variant"]
    w = main.get((winner, "fp32")) or next(r for r in summary if r["variant"] == winner)
    out.append(
        f"- Best variant on {arch} by mean test balanced accuracy: **{winner}** "
        f"({_ms(w['test_balanced_accuracy'])} fp32)."
    )
    amp_ratio = []
    for v in result["profile"]["variants"]:
        f32, amp = main.get((v, "fp32")), main.get((v, "amp"))
        if f32 and amp and f32["wall_seconds"][0] and amp["wall_seconds"][0]:
            amp_ratio.append(f32["wall_seconds"][0] / amp["wall_seconds"][0])
    if amp_ratio:
        out.append(
            f"- AMP ({result['cpu_precision']['amp_precision']}) vs fp32 wall time per run: "
            f"{min(amp_ratio):.2f}–{max(amp_ratio):.2f}x faster over the variants (machine-dependent: see "
            "the training benchmark's note on AVX2-only CPUs)."
        )
    cmp_arch = result["profile"]["compare_arch"]
    if cmp_arch:
        other = {(r["variant"], r["precision"]): r for r in summary if r["arch"] == cmp_arch}
        for p in result["profile"]["precisions"]:
            a, b = main.get((winner, p)), other.get((winner, p))
            if a and b and a["test_balanced_accuracy"][0] is not None and b["test_balanced_accuracy"][0] is not None:
                out.append(
                    f"- {cmp_arch} vs {arch} ({winner}, {p}): test balanced accuracy "
                    f"{b['test_balanced_accuracy'][0]:.3f} vs {a['test_balanced_accuracy'][0]:.3f}, wall "
                    f"{b['wall_seconds'][0]:.0f} s vs {a['wall_seconds'][0]:.0f} s per run."
                )
    return out


def render(result: dict[str, Any]) -> str:
    m, p, d = result["machine"], result["profile"], result["data"]
    finders = "; ".join(
        f"{arch} {fam}: chosen {f['chosen']:.3g} (bracket {f['bracket'][0]:.3g}..{f['bracket'][1]:.3g}, "
        f"{f['iterations']} it., {f['wall_seconds']:.0f} s)"
        for arch, fs in result["range_tests"].items()
        for fam, f in fs.items()
    )
    lines = [
        "## Pretrained backbones on real images (`make bench-pretrained`)",
        "",
        f"Command: `{result['command']}`",
        "",
        "| machine | value |",
        "|---|---|",
        f"| CPU | {m['cpu_model']} ({result['cpu_precision']['cpu_capability']}; native bf16: "
        f"{', '.join(result['cpu_precision']['cpu_native_bf16']) or 'none'}) |",
        f"| cores (usable / logical) | {m['usable_cores']} / {m['logical_cpus']} |",
        f"| load average at start / end | {m['load_average_at_start']} / {result['load_average_at_end']} |",
        f"| torch / threads | {m['torch']} / {m['torch_threads']} |",
        f"| AMP on this CPU | {result['cpu_precision']['amp_precision']} |",
        f"| date (UTC) / git commit | {m['date']} / {m['git_commit'][:10]} |",
        f"| total wall time | {result['wall_seconds']:.0f} s |",
        "",
        f"Setup: isic9 at {p['size']} px; {d['counts']['train']} train images ({_cap(p['per_class'])}, "
        f"of {d['available_train']} available), "
        f"{d['counts']['val']} validation ({_cap(p['val_per_class'])}, carved from the shipped train "
        f"folder), all {d['counts']['test']} shipped test images. ImageNet EfficientNet-Lite weights from the "
        "installed packages, inputs scaled to [-1, 1] as the weights were trained; DLR groups stem / blocks / head "
        f"(the stem at 1% of the head's LR). {p['epochs']} epochs, batch {p['batch']}, seeds "
        f"{', '.join(map(str, p['seeds']))}; runs interleaved by seed; no early stopping. LRs: `sgd` = thesis baseline "
        f"{BASELINE_LR} with step decay; the others = the `chosen` LR of their optimiser family's range test "
        f"({finders}). eta = (time for the same seed's sgd fp32 to reach its best validation balanced accuracy) / "
        "(time for the variant to reach it), with time = training + per-epoch validation; test figures use the "
        "snapshot ensemble for SGDR variants. Values are mean ± sd over seeds.",
        "",
        f"Linear probe on the frozen {result['probe']['arch']} pooled features (logistic regression, same train "
        f"images, test set): balanced accuracy **{result['probe']['test_balanced_accuracy']:.3f}**.",
        "",
        summary_table(result["summary"]),
        "",
        "What this means:",
        "",
        *reading(result),
    ]
    return "\n".join(lines)


def _cap(per_class: int | None) -> str:
    if per_class is None:
        return "all of them"
    return f"{per_class} per class at most, the first of each class in manifest order"


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    ap.add_argument("--arch", default=Profile.arch)
    ap.add_argument("--compare-arch", default=Profile.compare_arch, help="'' to skip")
    ap.add_argument("--size", type=int, default=Profile.size)
    ap.add_argument(
        "--per-class", type=int, default=Profile.per_class, help="training images per class (cap; default all)"
    )
    ap.add_argument(
        "--val-per-class", type=int, default=Profile.val_per_class, help="validation images per class (cap)"
    )
    ap.add_argument(
        "--epochs",
        type=int,
        default=Profile.epochs,
        help="epoch budget of every run (7 = 1+2+4: three sgdr_dlr_clm cycles)",
    )
    ap.add_argument("--batch", type=int, default=Profile.batch)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--precisions", default=",".join(PRECISIONS), help="fp32, amp or both")
    ap.add_argument("--find-lr-iters", type=int, default=Profile.find_lr_iters)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="RESULTS.md; JSON goes to <dir>/out/")
    ap.add_argument("--work-dir", type=Path, default=None, help="decoded caches (default <out dir>/out/work)")
    return ap.parse_args(argv)


def make_profile(args: argparse.Namespace) -> Profile:
    return Profile(
        arch=args.arch,
        compare_arch=args.compare_arch or None,
        size=args.size,
        per_class=args.per_class,
        val_per_class=args.val_per_class,
        epochs=args.epochs,
        batch=args.batch,
        seeds=tuple(int(s) for s in args.seeds.split(",")),
        variants=tuple(v for v in args.variants.split(",") if v),
        precisions=tuple(p for p in args.precisions.split(",") if p),
        find_lr_iters=args.find_lr_iters,
        threads=args.threads,
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    profile = make_profile(args)
    torch_settings = configure_torch(profile.threads)
    machine = machine_description(torch_settings)
    work = args.work_dir or args.out.parent / "out" / "work"
    start = time.perf_counter()
    data = isic9_data(profile.size, profile.per_class, profile.val_per_class, work)
    _log(f"isic9: {data['info']['counts']} images at {profile.size} px")
    probe = run_probe(data, profile.arch)
    _log(f"linear probe {profile.arch}: test balanced accuracy {probe['test_balanced_accuracy']:.3f}")
    range_tests = {profile.arch: run_range_tests(data, profile, profile.arch, profile.variants)}
    runs: list[dict[str, Any]] = []

    def go(arch: str, variants: Sequence[str], seed: int) -> None:
        for variant in variants:
            for precision in profile.precisions:
                run = run_one(data, profile, arch, variant, precision, variant_lr(variant, range_tests[arch]), seed)
                runs.append(run)
                _log(
                    f"{arch} seed {seed} {variant:13s} {precision:4s} "
                    + (
                        f"FAILED {run['error']}"
                        if "error" in run
                        else f"lr={run['lr']:.3g} val {run['best_val_balanced_accuracy']:.3f} test bal.acc "
                        f"{run['test_balanced_accuracy']:.3f} {run['wall_seconds']:.0f}s"
                    )
                )

    for seed in profile.seeds:
        go(profile.arch, profile.variants, seed)
    add_speedups(runs)
    winner = best_variant(summarise(runs), profile.arch)
    if profile.compare_arch:
        cmp_variants = ["sgd", winner] if winner != "sgd" else ["sgd"]
        range_tests[profile.compare_arch] = run_range_tests(data, profile, profile.compare_arch, cmp_variants)
        for seed in profile.seeds:
            go(profile.compare_arch, [winner], seed)
            if winner != "sgd":  # the compare arch's own baseline, so its eta means the same thing
                go(profile.compare_arch, ["sgd"], seed)
        add_speedups(runs)
    result = {
        "command": command_line(),
        "machine": machine,
        "cpu_precision": cpu_precision(arch=profile.arch),
        "profile": asdict(profile),
        "data": data["info"],
        "probe": probe,
        "range_tests": range_tests,
        "runs": runs,
        "summary": summarise(runs),
        "best_variant": winner,
        "wall_seconds": time.perf_counter() - start,
        "load_average_at_end": load_average(),
    }
    write_json(result, args.out.parent / "out" / "bench_pretrained.json")
    text = args.out.read_text() if args.out.is_file() else ""
    args.out.write_text(replace_section(text, SECTION, render(result)))
    _log(f"wrote section '{SECTION}' of {args.out} ({result['wall_seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
