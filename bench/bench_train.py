"""Training benchmark: the thesis's schedule variants, AMP, speedup eta, loop and loader throughput.

One process, one machine, one model (resnet18), one resolution, one epoch budget, one seed:

1. pretrain a resnet18 backbone on a synthetic source set (``ml.train.loop.pretrain``, SGDR, AMP) and
   save it; every variant fine-tunes from it (the head is re-initialised);
2. datasets: isic9 (its train/test folders, val carved out of train) and a long-tail synthetic set;
3. one LR range test per dataset (``ml.train.recipes.find_lr``) gives alpha_opt;
4. every variant x {fp32, AMP}: per-epoch validation metrics and wall time, test macro-F1;
5. eta = time-to-target of the SGD fp32 baseline / time-to-target of the variant;
6. training-step throughput of ``ml.train.loop.fit`` vs a bare PyTorch loop (interleaved, median);
7. training-loader throughput vs what a training step consumes;
8. ``RESULTS.md`` + raw JSON.

Run: ``make bench-train`` (full) or ``python -m bench.bench_train --quick`` (seconds, synthetic only).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from bench.common import (
    BASELINE_LR,
    command_line,
    configure_torch,
    load_average,
    machine_description,
    marked_sections,
    md_table,
    median,
    range_tests,
    variant_lr,
    write_json,
)
from ml.eval.metrics import eta, time_to_target
from ml.train.config import VARIANTS

REPO = Path(__file__).resolve().parents[1]

ARCH = "resnet18"
BATCH = 64
PRECISIONS = ("fp32", "amp")
BASELINE = ("sgd", "fp32")
METRIC = "val_balanced_accuracy"
ISIC9 = REPO.parent / "shared" / "data" / "isic9"
DEFAULT_OUT = REPO / "bench" / "RESULTS.md"

# Thesis speedups of SGDR+DLR+CLM over SGD (digest section 2); AMP rows are AMP-CLM over fp32-SGD.
THESIS_ETA = {
    ("sgdr_dlr_clm", "fp32"): "1.32–2.33 (Exmedio, no AMP)",
    ("sgdr_dlr_clm", "amp"): "1.67–3.82 (Exmedio, AMP); CIFAR-10 AMP 3.08–6.07",
}


@dataclass(frozen=True)
class Profile:
    """Sizes of one benchmark run."""

    size: int = 64
    epochs: int = 7
    datasets: tuple[str, ...] = ("isic9", "synth")
    seed: int = 0
    source_per_class: int = 100
    pretrain_epochs: int = 15
    pretrain_lr: float = 0.02
    synth_long_tail: bool = True
    synth_per_class: int = 20
    synth_test_frac: float = 0.2
    find_lr_iters: int = 100
    throughput_batches: int = 8
    throughput_repeats: int = 5
    loader_repeats: int = 5
    quick: bool = False
    force_amp: bool = False  # bf16 autocast in the AMP rows even on a CPU without native bf16


QUICK = Profile(
    size=32,
    epochs=2,
    datasets=("synth",),
    source_per_class=12,
    pretrain_epochs=1,
    synth_long_tail=False,
    synth_per_class=10,
    find_lr_iters=20,
    throughput_batches=2,
    throughput_repeats=2,
    loader_repeats=2,
    quick=True,
)


# --- pure functions (unit tested) ------------------------------------------------------------


def speedups(
    histories: dict[tuple[str, str], Sequence[dict[str, float]]],
    baseline: tuple[str, str] = BASELINE,
    metric: str = METRIC,
) -> dict[str, Any]:
    """Target = the baseline's best `metric`; per run: time to target and eta (None = never reached)."""
    base = histories[baseline]
    values = [r[metric] for r in base if not math.isnan(r[metric])]
    if not values:
        raise ValueError(f"baseline {baseline} has no finite {metric}")
    target = max(values)
    base_ttt = time_to_target(base, target, metric)
    base_s = base_ttt["seconds"] if base_ttt else None
    runs = {}
    for key, hist in histories.items():
        ttt = time_to_target(hist, target, metric)
        runs[key] = {"time_to_target": ttt, "eta": eta(base_s, ttt["seconds"] if ttt else None)}
    return {"target": target, "baseline_seconds": base_s, "runs": runs}


def cpu_precision(force_amp: bool = False, arch: str | None = None) -> dict[str, Any]:
    """What AMP means on this CPU (for ``arch``, in channels_last: the default): torch's capability
    string, the native bf16 flags, the decision."""
    import torch

    from ml.train.precision import NATIVE_BF16_FLAGS, choose_precision, machine_cpu_capability, machine_cpu_flags

    return {
        "cpu_capability": machine_cpu_capability(),
        "cpu_native_bf16": sorted(NATIVE_BF16_FLAGS & machine_cpu_flags()),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA"),
        "amp_precision": choose_precision(torch.device("cpu"), True, force_amp, arch=arch).reason,
    }


# --- data ---------------------------------------------------------------------------------------


def _log(msg: str) -> None:
    print(f"[bench-train {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _synth_dir(work: Path, name: str, cfg: Any) -> Path:
    """Generate once per config (deterministic); reuse a complete folder."""
    import hashlib
    import json

    from ml.data.synth import generate

    tag = hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True, default=str).encode()).hexdigest()[:10]
    folder = work / "synth" / f"{name}-{tag}-seed{cfg.seed}-{cfg.size}px"
    if not (folder / "synth_meta.csv").is_file():
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
        generate(folder, cfg, progress=False)
    return folder


def prepare_source(profile: Profile, work: Path) -> tuple[Any, Any, list[str]]:
    """The synthetic source set for pretraining: 10 classes x source_per_class at bench size.
    It differs from the synthetic target in seed and lesion field of view (smaller lesions)."""
    from ml.data.cache import build_cache
    from ml.data.manifest import build_manifest
    from ml.data.synth import SynthConfig

    cfg = SynthConfig(per_class=profile.source_per_class, size=profile.size, seed=profile.seed + 1000, fov=(0.2, 0.4))
    folder = _synth_dir(work, "source", cfg)
    cache = build_cache(build_manifest(folder), profile.size, work / "cache")
    return cache.images, cache.labels, cache.classes


def prepare_dataset(name: str, profile: Profile, work: Path) -> dict[str, Any] | None:
    """{'train','val','test': (uint8 images, labels), 'classes', 'info'} or None (isic9 absent)."""
    from ml.data.cache import build_cache
    from ml.data.manifest import build_manifest
    from ml.data.split import split_manifest
    from ml.data.synth import SynthConfig

    if name == "isic9":
        if not ISIC9.is_dir():
            _log(f"SKIP isic9: {ISIC9} not found")
            return None
        manifest = split_manifest(build_manifest(ISIC9), val_frac=1 / 6, test_frac=0.0, seed=profile.seed)
        source = str(ISIC9)
    elif name == "synth":
        cfg = SynthConfig(
            long_tail=profile.synth_long_tail,
            per_class=None if profile.synth_long_tail else profile.synth_per_class,
            size=profile.size,
            seed=profile.seed,
        )
        folder = _synth_dir(work, "target", cfg)
        manifest = split_manifest(
            build_manifest(folder), val_frac=1 / 6, test_frac=profile.synth_test_frac, seed=profile.seed
        )
        source = f"ml.data.synth.generate({cfg})"
    else:
        raise ValueError(f"unknown dataset {name!r} (known: isic9, synth)")
    cache = build_cache(manifest, profile.size, work / "cache")
    data = {split: cache.subset(split) for split in ("train", "val", "test")}
    info = {
        "source": source,
        "manifest_version": manifest.version,
        "bad_records": len(manifest.bad),
        "classes": cache.classes,
        "counts": {s: int(len(d[1])) for s, d in data.items()},
        "train_per_class": {c: int((data["train"][1] == i).sum()) for i, c in enumerate(cache.classes)},
    }
    return {**data, "classes": cache.classes, "info": info}


# --- training runs ---------------------------------------------------------------------------


def pretrain_backbone(profile: Profile, work: Path) -> dict[str, Any]:
    from ml.train.config import TrainConfig
    from ml.train.pretrain import pretrain

    images, labels, classes = prepare_source(profile, work)
    path = work / f"pretrained_{ARCH}_{profile.size}px_seed{profile.seed}.pt"
    cfg = TrainConfig(
        arch=ARCH,
        schedule="sgdr",
        lr=profile.pretrain_lr,
        epochs=profile.pretrain_epochs,
        batch_size=BATCH,
        amp=True,
        force_amp=profile.force_amp,
        seed=profile.seed,
        progress=False,
    )
    start = time.perf_counter()
    result = pretrain(images, labels, classes, cfg, path)
    info = {
        "path": str(path),
        "images": int(len(labels)),
        "classes": classes,
        "config": {k: cfg.to_dict()[k] for k in ("arch", "schedule", "lr", "epochs", "batch_size", "amp")},
        "wall_seconds": time.perf_counter() - start,
        "final_val_balanced_accuracy": result.history[-1][METRIC],
    }
    _log(
        f"pretrained {ARCH} on {len(labels)} synthetic source images in {info['wall_seconds']:.1f}s "
        f"(val bal. acc {info['final_val_balanced_accuracy']:.3f}) -> {path}"
    )
    return info


def run_lr_finders(data: dict[str, Any], weights: str, profile: Profile) -> dict[str, Any]:
    """The product's procedure: one range test per optimiser family (bench.common.range_tests)."""
    from ml.train.config import TrainConfig

    def config_for(variant: str) -> TrainConfig:
        return TrainConfig(
            arch=ARCH, weights=weights, schedule=variant, batch_size=BATCH, seed=profile.seed, progress=False
        )

    return range_tests(data["train"], data["classes"], VARIANTS, config_for, profile.find_lr_iters, log=_log)


_HISTORY_KEYS = (
    "epoch",
    "train_loss",
    "val_loss",
    "val_balanced_accuracy",
    "val_macro_f1",
    "val_accuracy",
    "epoch_seconds",
)


def run_variant(
    data: dict[str, Any], weights: str, variant: str, precision: str, lr: float, profile: Profile
) -> dict[str, Any]:
    from ml.eval.metrics import classification_metrics
    from ml.train.config import TrainConfig
    from ml.train.loop import fit

    cfg = TrainConfig(
        arch=ARCH,
        weights=weights,
        schedule=variant,
        lr=lr,
        epochs=profile.epochs,
        batch_size=BATCH,
        amp=precision == "amp",
        force_amp=profile.force_amp,
        snapshots=3,
        seed=profile.seed,
        progress=False,
    )
    try:
        result = fit(data["train"], data["val"], data["classes"], cfg)
    except (FloatingPointError, RuntimeError, ValueError) as exc:
        return {"variant": variant, "precision": precision, "lr": lr, "error": f"{type(exc).__name__}: {exc}"}
    test_images, test_labels = data["test"]
    test = classification_metrics(test_labels, result.predict_proba(test_images), data["classes"])
    history = [{k: float(r[k]) for k in _HISTORY_KEYS if k in r} for r in result.history]
    cumulative, total = [], 0.0
    for r in history:
        total += r["epoch_seconds"]
        cumulative.append(total)
    best = max((r[METRIC] for r in history if not math.isnan(r[METRIC])), default=math.nan)
    return {
        "variant": variant,
        "precision": precision,
        "amp_dtype": result.amp_dtype,
        "lr": lr,
        "history": history,
        "cumulative_seconds": cumulative,
        "wall_seconds": total,
        "best_val_balanced_accuracy": best,
        "best_epoch": next(int(r["epoch"]) for r in history if r[METRIC] == best) if not math.isnan(best) else None,
        "test_macro_f1": test["macro_f1"],
        "test_balanced_accuracy": test["balanced_accuracy"],
        "test_accuracy": test["accuracy"],
        "test_models": max(1, len(result.snapshots)),
        "snapshot_iterations": result.snapshot_iterations,
    }


def run_dataset(name: str, data: dict[str, Any], weights: str, profile: Profile) -> dict[str, Any]:
    info = data["info"]
    _log(f"{name}: {info['counts']} images, {len(data['classes'])} classes")
    finders = run_lr_finders(data, weights, profile)
    runs: dict[tuple[str, str], dict[str, Any]] = {}
    for variant in VARIANTS:
        for precision in PRECISIONS:
            run = run_variant(data, weights, variant, precision, variant_lr(variant, finders), profile)
            runs[(variant, precision)] = run
            if "error" in run:
                _log(f"{name}: {variant:13s} {precision}: FAILED {run['error']}")
            else:
                _log(
                    f"{name}: {variant:13s} {precision:4s} lr={run['lr']:.3g} best val bal.acc "
                    f"{run['best_val_balanced_accuracy']:.3f} test macro-F1 {run['test_macro_f1']:.3f} "
                    f"{run['wall_seconds']:.1f}s"
                )
    ok = {k: r["history"] for k, r in runs.items() if "error" not in r}
    speed = speedups(ok) if BASELINE in ok else None
    for key, run in runs.items():
        s = speed["runs"].get(key) if speed else None
        run["time_to_target"] = s["time_to_target"] if s else None
        run["eta"] = s["eta"] if s else None
        run["thesis_eta"] = THESIS_ETA.get(key)
    return {
        "dataset": name,
        "info": info,
        "lr_finders": finders,
        "lrs": {v: variant_lr(v, finders) for v in VARIANTS},
        "target": speed["target"] if speed else None,
        "baseline_seconds": speed["baseline_seconds"] if speed else None,
        "runs": [runs[(v, p)] for v in VARIANTS for p in PRECISIONS],
    }


# --- throughput ------------------------------------------------------------------------------


def _tile(data: tuple[Any, Any], n: int) -> tuple[Any, Any]:
    import numpy as np

    images, labels = data
    idx = np.arange(n) % len(labels)
    return np.ascontiguousarray(images[idx]), np.ascontiguousarray(labels[idx])


class _TrainPhaseTimer:
    """Callback: time from on_train_begin to the last on_snapshot (the final step of the epoch),
    i.e. fit's training phase without validation."""

    def __init__(self) -> None:
        self.begin = self.end = None

    def on_train_begin(self, state: Any) -> None:
        self.begin = time.perf_counter()

    def on_epoch_end(self, epoch: int, metrics: dict, state: Any) -> None:
        pass

    def on_snapshot(self, index: int, iteration: int, state: Any) -> None:
        self.end = time.perf_counter()

    def on_train_end(self, result: Any) -> None:
        pass


def measure_step_throughput(data: tuple[Any, Any], num_classes: int, profile: Profile) -> dict[str, Any]:
    """fit vs a bare loop, same model/batch/size, ABAB interleaved, medians; fp32 and AMP."""
    import torch
    import torch.nn.functional as F

    from ml.train.config import TrainConfig
    from ml.train.loop import fit
    from ml.train.models import build_model
    from ml.train.precision import choose_precision
    from ml.train.transforms import channel_stats, to_float_batch

    n = profile.throughput_batches * BATCH
    images, labels = _tile(data, n)
    val = (images[:8], labels[:8])
    classes = [f"c{i}" for i in range(num_classes)]
    norm = channel_stats(images)
    xs = [to_float_batch(torch.from_numpy(images[i : i + BATCH]), *norm) for i in range(0, n, BATCH)]
    ys = [torch.from_numpy(labels[i : i + BATCH]) for i in range(0, n, BATCH)]
    device = torch.device("cpu")
    out: dict[str, Any] = {
        "images_per_run": n,
        "batches_per_run": len(xs),
        "batch_size": BATCH,
        "size": profile.size,
        "repeats": profile.throughput_repeats,
    }

    for precision in PRECISIONS:
        dtype = choose_precision(device, precision == "amp", profile.force_amp).dtype

        def bare(dtype=dtype) -> float:
            torch.manual_seed(profile.seed)
            model = build_model(ARCH, num_classes).train()
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
            start = time.perf_counter()
            for x, y in zip(xs, ys):
                opt.zero_grad()
                with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                    loss = F.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
            return time.perf_counter() - start

        def ours(precision=precision) -> tuple[float, float]:
            timer = _TrainPhaseTimer()
            cfg = TrainConfig(
                arch=ARCH,
                schedule="sgdr_dlr_clm",
                lr=0.01,
                epochs=1,
                batch_size=BATCH,
                amp=precision == "amp",
                force_amp=profile.force_amp,
                snapshots=3,
                seed=profile.seed,
                progress=False,
            )
            result = fit((images, labels), val, classes, cfg, callbacks=[timer])
            return timer.end - timer.begin, result.history[0]["epoch_seconds"]

        bare(), ours()  # warm-up, not recorded
        bare_s, train_s, epoch_s = [], [], []
        for _ in range(profile.throughput_repeats):  # ABAB
            bare_s.append(bare())
            t, e = ours()
            train_s.append(t)
            epoch_s.append(e)
        b, t, e = median(bare_s), median(train_s), median(epoch_s)
        out[precision] = {
            "bare_seconds": bare_s,
            "fit_train_seconds": train_s,
            "fit_epoch_seconds": epoch_s,
            "bare_images_per_s": n / b,
            "fit_images_per_s": n / t,
            "fit_epoch_images_per_s": n / e,
            "ratio": b / t,
            "ratio_incl_val": b / e,
        }
        _log(
            f"step throughput {precision}: bare {n / b:.1f} img/s, fit {n / t:.1f} img/s "
            f"(ratio {b / t:.3f}; with validation of 8 images {b / e:.3f})"
        )
    return out


def measure_loader_throughput(
    data: tuple[Any, Any], num_classes: int, profile: Profile, consumption: dict[str, float]
) -> dict[str, Any]:
    """Images/s the training input pipeline (sampler + batch gather + normalise + augment) delivers
    with no model, vs images/s a training step of fit consumes."""
    import torch

    from ml.train.batches import TrainBatches
    from ml.train.config import TrainConfig
    from ml.train.transforms import channel_stats

    n = profile.throughput_batches * BATCH
    images, labels = _tile(data, n)
    cfg = TrainConfig(arch=ARCH, batch_size=BATCH, seed=profile.seed, progress=False)
    batches = TrainBatches((images, labels), num_classes, cfg, channel_stats(images), torch.device("cpu"))
    for _ in batches:  # warm-up
        pass
    times = []
    for _ in range(profile.loader_repeats):
        start = time.perf_counter()
        count = sum(len(y) for _, y in batches)
        times.append(time.perf_counter() - start)
    rate = count / median(times)
    out = {"images_per_epoch": count, "seconds": times, "loader_images_per_s": rate, "num_workers": cfg.num_workers}
    for precision, consumed in consumption.items():
        out[precision] = {
            "step_images_per_s": consumed,
            "ratio": rate / consumed,
            "loader_share_of_step_time": consumed / rate,
        }
        _log(f"loader {rate:.0f} img/s vs {precision} step {consumed:.1f} img/s: ratio {rate / consumed:.1f}")
    return out


# --- report ----------------------------------------------------------------------------------


def _eta_text(run: dict[str, Any]) -> str:
    if "error" in run:
        return "failed"
    if run.get("eta") is None:
        return "never reached"
    return f"{run['eta']:.2f}"


def dataset_table(ds: dict[str, Any]) -> str:
    rows = []
    for r in ds["runs"]:
        if "error" in r:
            rows.append(
                [
                    r["variant"],
                    r["precision"],
                    f"{r['lr']:.3g}",
                    "failed",
                    "—",
                    "—",
                    "—",
                    "failed",
                    r.get("thesis_eta") or "—",
                ]
            )
            continue
        ttt = r.get("time_to_target")
        rows.append(
            [
                r["variant"],
                r["precision"] + (f" ({r.get('amp_dtype') or 'fp32'})" if r["precision"] == "amp" else ""),
                f"{r['lr']:.3g}",
                f"{r['best_val_balanced_accuracy']:.3f}",
                f"{r['test_macro_f1']:.3f}" + (f" (ens. {r['test_models']})" if r["test_models"] > 1 else ""),
                str(ttt["epoch"]) if ttt else "never",
                f"{ttt['seconds']:.1f}" if ttt else "—",
                _eta_text(r),
                r.get("thesis_eta") or "—",
            ]
        )
    return md_table(
        [
            "variant",
            "precision",
            "LR",
            "best val bal. acc",
            "test macro-F1",
            "epochs to target",
            "time to target (s)",
            "eta",
            "thesis eta",
        ],
        rows,
    )


def curves_table(ds: dict[str, Any]) -> str:
    ok = [r for r in ds["runs"] if "error" not in r]
    if not ok:
        return ""
    epochs = max(len(r["history"]) for r in ok)
    rows = []
    for r in ok:
        cells = [
            f"{h[METRIC]:.3f} / {h['val_macro_f1']:.3f} @ {c:.0f}s"
            for h, c in zip(r["history"], r["cumulative_seconds"])
        ]
        rows.append([r["variant"], r["precision"]] + cells + [""] * (epochs - len(cells)))
    return md_table(["variant", "precision"] + [f"epoch {i + 1}" for i in range(epochs)], rows)


def interpretation(result: dict[str, Any]) -> list[str]:
    """Sentences computed from the numbers (no fixed conclusions)."""
    lines = []
    for ds in result["datasets"]:
        ok = [r for r in ds["runs"] if "error" not in r]
        failed = [f"{r['variant']}/{r['precision']}" for r in ds["runs"] if "error" in r]
        if not ok or ds["target"] is None:
            lines.append(f"- **{ds['dataset']}**: no baseline result, no speedups ({len(failed)} runs failed).")
            continue
        reached = [r for r in ok if r.get("eta") is not None]
        fastest = max(reached, key=lambda r: r["eta"]) if reached else None
        best_f1 = max(ok, key=lambda r: r["test_macro_f1"])
        base = next((r for r in ok if (r["variant"], r["precision"]) == BASELINE), None)
        text = (
            f"- **{ds['dataset']}**: target (SGD fp32 best val bal. acc) {ds['target']:.3f}; "
            f"{len(reached)}/{len(ok)} runs reached it"
        )
        if fastest is not None:
            text += f", fastest {fastest['variant']}/{fastest['precision']} (eta {fastest['eta']:.2f})"
        text += (
            f". Best test macro-F1: {best_f1['variant']}/{best_f1['precision']} {best_f1['test_macro_f1']:.3f}"
            + (f" vs SGD fp32 {base['test_macro_f1']:.3f}" if base else "")
            + "."
        )
        for precision, (lo, hi) in (("fp32", (1.32, 2.33)), ("amp", (1.67, 3.82))):
            clm = next((r for r in ok if r["variant"] == "sgdr_dlr_clm" and r["precision"] == precision), None)
            if clm is None:
                continue
            if clm["eta"] is None:
                text += f" SGDR+DLR+CLM {precision} never reached the target (thesis Exmedio eta {lo}–{hi})."
            else:
                where = "inside" if lo <= clm["eta"] <= hi else ("below" if clm["eta"] < lo else "above")
                text += f" SGDR+DLR+CLM {precision} eta {clm['eta']:.2f} is {where} the thesis's Exmedio {lo}–{hi}."
        pairs = [
            (r, next((a for a in ok if a["variant"] == r["variant"] and a["precision"] == "amp"), None))
            for r in ok
            if r["precision"] == "fp32"
        ]
        factors = [f["wall_seconds"] / a["wall_seconds"] for f, a in pairs if a is not None and a["wall_seconds"] > 0]
        dtypes = {a["amp_dtype"] for _, a in pairs if a is not None}
        if factors and dtypes == {None}:
            text += (
                f" The AMP rows trained in fp32 ({result['machine']['amp_precision']}): their times repeat "
                "fp32's, not an AMP speed-up."
            )
        elif factors:
            text += (
                f" AMP ({', '.join(sorted(d for d in dtypes if d))}) made the whole "
                f"{ds['info']['counts']['train']}-image fits {median(factors):.2f}x faster (median over variants) "
                f"on this CPU ({result['machine']['cpu_capability']}); the factor is machine-dependent."
            )
        if failed:
            text += f" Failed: {', '.join(failed)}."
        lines.append(text)
    tp = result.get("throughput")
    if tp:
        for precision in PRECISIONS:
            ratio = tp["step"][precision]["ratio"]
            verdict = "meets" if ratio >= 0.95 else "misses"
            text = f"- Training loop {precision}: fit runs at {ratio:.3f}x the bare loop's throughput ({verdict} the >= 0.95 target)"
            if ratio > 1.05:
                text += "; fit faster than the bare loop is noise from other load (compare the min–max columns)."
            elif ratio < 1.0:
                text += (
                    f"; the {100 * (1 - ratio):.1f}% gap is what fit adds: batch gather, normalisation and "
                    "augmentation, the per-iteration scheduler and the end-of-cycle snapshot."
                )
            else:
                text += "."
            lines.append(text)
        ld = tp["loader"]
        worst = min(ld[p]["ratio"] for p in PRECISIONS)
        lines.append(
            f"- Loader: {ld['loader_images_per_s']:.0f} img/s vs at most "
            f"{max(ld[p]['step_images_per_s'] for p in PRECISIONS):.0f} img/s consumed; ratio >= {worst:.1f} "
            + ("(never the bottleneck" if worst >= 5 else "(close to being a bottleneck")
            + f"; with num_workers={ld['num_workers']} it runs in series with the step and costs "
            f"{100 * max(ld[p]['loader_share_of_step_time'] for p in PRECISIONS):.0f}% of step time at most)."
        )
    load = result["machine"].get("load_average_at_start")
    cores = result["machine"].get("usable_cores") or 1
    if load and max(load[0], (result.get("load_average_at_end") or [0])[0]) > 0.5 * cores:
        lines.append(
            f"- The machine was not quiet (1-min load {load[0]:.1f} at start, "
            f"{(result.get('load_average_at_end') or ['?'])[0]} at end, {cores} cores): wall times and "
            "etas carry that noise; rerun on an idle machine for numbers to quote."
        )
    if result["profile"]["quick"]:
        lines.append(
            "- This is a `--quick` format check: tiny data, 2 epochs; the numbers say nothing about the method."
        )
    return lines


def render_markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    p = result["profile"]
    parts = [
        "# Training benchmark (`make bench-train`)",
        "",
        f"Command: `{result['command']}`",
        "",
        "## Machine",
        "",
        md_table(
            ["item", "value"],
            [
                ["CPU", m["cpu_model"]],
                [
                    "CPU capability (torch) / native bf16 flags",
                    f"{m['cpu_capability']} / {', '.join(m['cpu_native_bf16']) or 'none'}",
                ],
                ["AMP on this CPU", m["amp_precision"]],
                ["cores (usable / logical)", f"{m['usable_cores']} / {m['logical_cpus']}"],
                ["load average at start / end", f"{m['load_average_at_start']} / {result.get('load_average_at_end')}"],
                ["torch", m["torch"]],
                ["torch threads", str(m["torch_threads"])],
                ["flush denormal", "on" if m["flush_denormal"] else "off (unsupported)"],
                ["CUDA", str(m["cuda"])],
                ["python", m["python"]],
                ["platform", m["platform"]],
                ["date (UTC)", m["date"]],
                ["git commit", m["git_commit"]],
                ["total wall time", f"{result['wall_seconds']:.0f} s"],
            ],
        ),
        "",
        "## Setup",
        "",
        f"Model {ARCH}, {p['size']} px, batch {BATCH}, {p['epochs']} epochs for every variant, seed {p['seed']}, "
        f"no early stopping. Backbone pretrained on a synthetic source set "
        f"({result['pretrain']['images']} images, {result['pretrain']['config']['schedule']}, "
        f"{result['pretrain']['config']['epochs']} epochs, lr {result['pretrain']['config']['lr']}, AMP) and "
        f"fine-tuned with a fresh head. LRs: `sgd` = thesis baseline {BASELINE_LR} with step decay; the others = "
        "the `chosen` LR of their optimiser family's range test (the product's procedure: Adam's own range test "
        "for adam, SGD's for sgdr, SGD with discriminative groups for the DLR variants). "
        "Target = best validation balanced accuracy of `sgd` fp32; time to target = cumulative `epoch_seconds` "
        "(training + per-epoch validation) up to the first epoch at or above it; eta = baseline time / variant "
        "time. Test macro-F1: snapshot ensemble (mean softmax of the kept cycle-end snapshots) for SGDR "
        "variants, final model for sgd/adam. The thesis eta is SGDR+DLR+CLM over SGD (digest section 2).",
        "",
    ]
    for ds in result["datasets"]:
        info = ds["info"]
        finders = "; ".join(
            f"{fam}: chosen {f['chosen']:.3g}, bracket {f['bracket'][0]:.3g}..{f['bracket'][1]:.3g} "
            f"({f['iterations']} iterations, {f['wall_seconds']:.1f} s)"
            for fam, f in ds["lr_finders"].items()
        )
        parts += [
            f"## {ds['dataset']}",
            "",
            f"{info['counts']['train']} train / {info['counts']['val']} val / {info['counts']['test']} test images, "
            f"{len(info['classes'])} classes (train per class: "
            + ", ".join(f"{c} {n}" for c, n in info["train_per_class"].items())
            + "). "
            f"LR range tests (one per optimiser family): {finders}. "
            + (
                f"Target {ds['target']:.3f}, baseline time to target {ds['baseline_seconds']:.1f} s."
                if ds["target"] is not None
                else "No baseline result."
            ),
            "",
            dataset_table(ds),
            "",
            "Per-epoch validation balanced accuracy / macro-F1 @ cumulative seconds:",
            "",
            curves_table(ds),
            "",
        ]
    for name in result.get("skipped", []):
        parts += [f"## {name}", "", f"Skipped: {result['skipped'][name]}", ""]
    tp = result.get("throughput")
    if tp:
        st, ld = tp["step"], tp["loader"]
        parts += [
            "## Throughput",
            "",
            f"Data: {tp['dataset']} train images tiled to {st['images_per_run']} images "
            f"({st['batches_per_run']} batches of {BATCH}, {st['size']} px); {st['repeats']} interleaved repeats "
            "(bare, fit, bare, fit, ...) after one warm-up each; medians. Bare loop: `zero_grad; "
            "cross_entropy(model(x), y); backward; step` (SGD momentum) over pre-made normalised float tensors. "
            "fit: `ml.train.loop.fit`, 1 epoch of `sgdr_dlr_clm`, timed by a callback from `on_train_begin` to the "
            "last step's `on_snapshot`, so it includes batch gather from uint8, normalisation, augmentation, the "
            "per-iteration scheduler and LR trace, and the cycle-end snapshot copy, but not model construction "
            "or validation; the `incl. val` column is `epoch_seconds` (adds validation of 8 images).",
            "",
            md_table(
                [
                    "precision",
                    "bare img/s",
                    "fit img/s",
                    "ratio fit/bare",
                    "ratio incl. val",
                    "target",
                    "bare s (min–max)",
                    "fit s (min–max)",
                ],
                [
                    [
                        pr,
                        f"{st[pr]['bare_images_per_s']:.1f}",
                        f"{st[pr]['fit_images_per_s']:.1f}",
                        f"{st[pr]['ratio']:.3f}",
                        f"{st[pr]['ratio_incl_val']:.3f}",
                        ">= 0.95",
                        f"{min(st[pr]['bare_seconds']):.3f}–{max(st[pr]['bare_seconds']):.3f}",
                        f"{min(st[pr]['fit_train_seconds']):.3f}–{max(st[pr]['fit_train_seconds']):.3f}",
                    ]
                    for pr in PRECISIONS
                ],
            ),
            "",
            f"Training loader (`ml.train.loop.TrainBatches`: sampler + uint8 batch gather + normalise + augment, "
            f"num_workers={ld['num_workers']}, no model): {ld['loader_images_per_s']:.0f} img/s.",
            "",
            md_table(
                ["precision", "step consumes img/s", "loader / step", "loader share of step time"],
                [
                    [
                        pr,
                        f"{ld[pr]['step_images_per_s']:.1f}",
                        f"{ld[pr]['ratio']:.1f}",
                        f"{100 * ld[pr]['loader_share_of_step_time']:.1f}%",
                    ]
                    for pr in PRECISIONS
                ],
            ),
            "",
        ]
    parts += ["## What this means", "", *interpretation(result), "", f"Raw data: `{result['json_path']}`.", ""]
    return "\n".join(parts)


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="tiny profile: synthetic only, 32 px, 2 epochs (< 1 min)")
    ap.add_argument("--size", type=int, help="image size in px (default 64; quick 32)")
    ap.add_argument("--epochs", type=int, help="epoch budget for every variant (default 7 = 1+2+4; quick 2)")
    ap.add_argument("--datasets", help="comma list of isic9,synth (default both; quick synth)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="RESULTS.md path; JSON goes to <dir>/out/")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all usable cores)")
    ap.add_argument(
        "--force-amp",
        action="store_true",
        help="bf16 autocast in the AMP rows even where the CPU has no native bf16 (default: fp32 there)",
    )
    ap.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="synthetic images, caches, pretrained weights (default <out dir>/out/work)",
    )
    return ap.parse_args(argv)


def make_profile(args: argparse.Namespace) -> Profile:
    profile = QUICK if args.quick else Profile()
    changes: dict[str, Any] = {"seed": args.seed, "force_amp": args.force_amp}
    if args.size is not None:
        changes["size"] = args.size
    if args.epochs is not None:
        changes["epochs"] = args.epochs
    if args.datasets:
        changes["datasets"] = tuple(d.strip() for d in args.datasets.split(",") if d.strip())
    return replace(profile, **changes)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    profile = make_profile(args)
    torch_settings = configure_torch(args.threads)
    started = time.perf_counter()
    out_md = args.out.resolve()
    json_path = out_md.parent / "out" / "bench_train.json"
    work = (args.work_dir or out_md.parent / "out" / "work").resolve()
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "command": command_line([sys.argv[0], *(sys.argv[1:] if argv is None else argv)]),
        "machine": {**machine_description(torch_settings), **cpu_precision(profile.force_amp)},
        "profile": asdict(profile),
        "json_path": str(json_path),
        "datasets": [],
        "skipped": {},
    }
    _log(f"profile {asdict(profile)}; torch threads {torch_settings['threads']}")
    result["pretrain"] = pretrain_backbone(profile, work)
    weights = result["pretrain"]["path"]
    first_train = None
    for name in profile.datasets:
        data = prepare_dataset(name, profile, work)
        if data is None:
            result["skipped"][name] = f"{ISIC9} not found"
            continue
        result["datasets"].append(run_dataset(name, data, weights, profile))
        if first_train is None:
            first_train = (name, data["train"], len(data["classes"]))
    if first_train is not None:
        name, train, num_classes = first_train
        step = measure_step_throughput(train, num_classes, profile)
        consumption = {p: step[p]["fit_images_per_s"] for p in PRECISIONS}
        result["throughput"] = {
            "dataset": name,
            "step": step,
            "loader": measure_loader_throughput(train, num_classes, profile, consumption),
        }
    result["wall_seconds"] = time.perf_counter() - started
    result["load_average_at_end"] = load_average()
    write_json(_jsonable(result), json_path)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(keep_other_sections(out_md, render_markdown(result)))
    _log(f"wrote {out_md} and {json_path} ({result['wall_seconds']:.0f}s)")
    return result


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {(k if isinstance(k, str) else "/".join(k)): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


STATE = "<!-- state:start -->"  # the file's summary of what is current: kept on top


def keep_other_sections(path: Path, text: str) -> str:
    """``text`` (this benchmark's part: the top of the file) with the hand-written ``state``
    section above it and, below it, everything from the first other benchmark's section on, byte
    for byte: their sections and the readings written by hand between them."""
    old = path.read_text() if path.exists() else ""
    head = "".join(k + "\n\n" for k in marked_sections(old) if k.startswith(STATE))
    other = re.search(r"<!-- (?!state:)[\w-]+:start -->", old)
    rest = old[other.start() :] if other else ""
    return head + text.rstrip() + ("\n\n" + rest if rest else "\n")


if __name__ == "__main__":
    main()
