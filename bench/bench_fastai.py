"""skinflow side by side with fastai, what a user would pick instead: the same isic9 images, the
same ImageNet EfficientNet-Lite0 weights, the same resolution and epoch budget; each with its own
recommended recipe and its LR finder included in the wall time.

- fastai 2.8 (a bench-only extra, ``pip install -e '.[bench]'``): ``Learner`` on the model,
  ``lr_find()`` (its default 100 iterations, stopping at divergence), then ``fit_one_cycle(epochs,
  lr_max=<valley suggestion>)`` with its default optimiser (Adam, weight decay 0.01); augmentation
  ``aug_transforms`` limited to flips and zoom (``max_zoom`` 1.1, no rotation, warp or lighting), as
  in the thesis; inputs scaled to [-1, 1] as the weights were trained. fastai's mixed precision is
  CUDA-only (``MixedPrecision`` autocasts 'cuda'), so on a CPU it trains fp32.
- skinflow: ``ml.train.recipes.find_lr`` (the LR range test of the variant's optimiser family, 100
  iterations) then ``ml.train.loop.fit`` with the chosen LR: the benchmark's best variant
  (``bench/out/bench_pretrained.json`` when present, else sgdr_dlr_clm), with AMP (what skinflow
  picks on this CPU) and in fp32 (precision-matched with fastai).

Runs are interleaved per seed (the order rotates with the seed). Reported: wall time (LR finder +
training, with per-epoch validation on both sides), test balanced accuracy and macro-F1 on the shipped
test images, and the goal of issue #12: skinflow reaching fastai's balanced accuracy in at most 0.8x
fastai's wall time. Run: ``make bench-fastai`` (about 25 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.bench_pretrained import Profile, isic9_data
from bench.bench_train import cpu_precision
from bench.common import (
    command_line,
    configure_torch,
    load_average,
    machine_description,
    md_table,
    replace_section,
    write_json,
)

REPO = Path(__file__).resolve().parents[1]

ARCH = "efficientnet_lite0"
DEFAULT_OUT = REPO / "bench" / "RESULTS.md"
PRETRAINED_JSON = REPO / "bench" / "out" / "bench_pretrained.json"
SECTION = "fastai"
GOAL_TIME_RATIO = 0.8
MAX_ZOOM = 1.1


def _log(msg: str) -> None:
    print(f"[bench-fastai {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _scores(labels: Any, probs: Any, classes: list[str]) -> dict[str, float]:
    from ml.eval.metrics import classification_metrics

    m = classification_metrics(labels, probs, classes)
    return {"test_balanced_accuracy": m["balanced_accuracy"], "test_macro_f1": m["macro_f1"]}


# --- fastai -------------------------------------------------------------------------------------


def _fastai_loaders(data: dict[str, Any], batch: int, seed: int):
    import torch
    from fastai.data.core import DataLoaders, TfmdDL
    from fastai.data.transforms import Normalize
    from fastai.torch_core import TensorCategory, TensorImage
    from fastai.vision.augment import aug_transforms
    from fastai.vision.core import IntToFloatTensor

    from ml.train.transforms import PRETRAINED_STATS

    mean, std = PRETRAINED_STATS["efficientnet_lite"]
    norm = Normalize.from_stats(mean, std, cuda=False)

    def items(split: str) -> list[tuple[Any, Any]]:
        images, labels = data[split]
        return [
            (TensorImage(torch.from_numpy(images[i]).permute(2, 0, 1).contiguous()), TensorCategory(int(labels[i])))
            for i in range(len(labels))
        ]

    augs = aug_transforms(
        do_flip=True, max_rotate=0.0, max_zoom=MAX_ZOOM, max_lighting=0.0, max_warp=0.0, p_lighting=0.0
    )
    train = TfmdDL(
        items("train"),
        bs=batch,
        shuffle=True,
        drop_last=True,
        num_workers=0,
        after_batch=[IntToFloatTensor(), *augs, norm],
        device=torch.device("cpu"),
    )
    train.rng.seed(seed)
    valid = TfmdDL(
        items("val"), bs=batch * 2, num_workers=0, after_batch=[IntToFloatTensor(), norm], device=torch.device("cpu")
    )
    test = TfmdDL(
        items("test"), bs=batch * 2, num_workers=0, after_batch=[IntToFloatTensor(), norm], device=torch.device("cpu")
    )
    return DataLoaders(train, valid, device=torch.device("cpu")), test


def run_fastai(data: dict[str, Any], epochs: int, batch: int, seed: int, work: Path) -> dict[str, Any]:
    import fastai.callback.schedule  # noqa: F401  (patches lr_find, fit_one_cycle onto Learner)
    import torch
    from fastai.learner import Learner
    from fastai.losses import CrossEntropyLossFlat
    from fastai.metrics import BalancedAccuracy
    from fastai.torch_core import set_seed

    from ml.train.models import build_model

    set_seed(seed, reproducible=True)
    dls, test_dl = _fastai_loaders(data, batch, seed)
    model = build_model(ARCH, len(data["classes"]), weights="imagenet")
    # lr_find saves and restores the model through <path>/models/_tmp.pth: keep that in the work dir
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), metrics=[BalancedAccuracy()], path=work / "fastai")
    start = time.perf_counter()
    with learn.no_bar(), learn.no_logging():
        sugg = learn.lr_find(show_plot=False)
        found = time.perf_counter() - start
        finder_iterations = len(learn.recorder.lrs)
        learn.fit_one_cycle(epochs, lr_max=float(sugg.valley))
    wall = time.perf_counter() - start
    with learn.no_bar():
        probs, labels = learn.get_preds(dl=test_dl)
    val = [float(r[-1]) for r in learn.recorder.values]  # (train loss, valid loss, balanced accuracy) per epoch
    return {
        "side": "fastai",
        "precision": "fp32",
        "seed": seed,
        "lr": float(sugg.valley),
        "lr_find_iterations": finder_iterations,
        "lr_find_seconds": found,
        "wall_seconds": wall,
        "val_balanced_accuracy": val,
        **_scores(labels.numpy(), torch.as_tensor(probs).float().numpy(), data["classes"]),
    }


# --- skinflow -----------------------------------------------------------------------------------


def run_skinflow(data: dict[str, Any], variant: str, amp: bool, epochs: int, batch: int, seed: int) -> dict[str, Any]:
    from ml.train.config import TrainConfig
    from ml.train.loop import fit
    from ml.train.recipes import find_lr

    cfg = TrainConfig(
        arch=ARCH,
        weights="imagenet",
        schedule=variant,
        epochs=epochs,
        batch_size=batch,
        amp=amp,
        snapshots=3,
        seed=seed,
        progress=False,
    )
    start = time.perf_counter()
    finder = find_lr(data["train"], data["classes"], cfg, num_iter=100)
    found = time.perf_counter() - start
    result = fit(data["train"], data["val"], data["classes"], cfg.model_copy(update={"lr": finder.chosen}))
    wall = time.perf_counter() - start
    probs = result.predict_proba(data["test"][0])
    return {
        "side": "skinflow",
        "variant": variant,
        "precision": result.amp_dtype or "fp32",
        "seed": seed,
        "lr": float(finder.chosen),
        "lr_find_iterations": len(finder.lrs),
        "lr_find_seconds": found,
        "wall_seconds": wall,
        "val_balanced_accuracy": [float(r["val_balanced_accuracy"]) for r in result.history],
        **_scores(data["test"][1], probs, data["classes"]),
    }


# --- report -------------------------------------------------------------------------------------


def _ms(values: Sequence[float], spec: str = ".3f") -> str:
    if not values:
        return "—"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):{spec}} ± {sd:{spec}}"


def side_key(run: dict[str, Any]) -> str:
    return (
        "fastai (fit_one_cycle, fp32)"
        if run["side"] == "fastai"
        else f"skinflow ({run['variant']}, {run['precision']})"
    )


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for key in dict.fromkeys(side_key(r) for r in runs):
        group = [r for r in runs if side_key(r) == key]
        out.append(
            {
                "side": key,
                "seeds": len(group),
                **{
                    m: [r[m] for r in group]
                    for m in ("wall_seconds", "lr_find_seconds", "lr", "test_balanced_accuracy", "test_macro_f1")
                },
            }
        )
    return out


def goal_rows(summary: list[dict[str, Any]]) -> list[str]:
    """The #12 goal per skinflow row: mean balanced accuracy >= fastai's in <= 0.8x its wall time."""
    fa = next((s for s in summary if s["side"].startswith("fastai")), None)
    if fa is None:
        return []
    fa_acc, fa_t = statistics.fmean(fa["test_balanced_accuracy"]), statistics.fmean(fa["wall_seconds"])
    lines = []
    for s in summary:
        if s is fa:
            continue
        acc, t = statistics.fmean(s["test_balanced_accuracy"]), statistics.fmean(s["wall_seconds"])
        met = acc >= fa_acc and t <= GOAL_TIME_RATIO * fa_t
        lines.append(
            f"- {s['side']}: balanced accuracy {acc:.3f} vs fastai {fa_acc:.3f} "
            f"({acc - fa_acc:+.3f}), wall time {t / fa_t:.2f}x fastai's ({t:.0f} s vs {fa_t:.0f} s): "
            f"goal (>= fastai's accuracy in <= {GOAL_TIME_RATIO}x its time) " + ("**met**." if met else "**not met**.")
        )
    return lines


def render(result: dict[str, Any]) -> str:
    m, p = result["machine"], result["profile"]
    rows = [
        [
            s["side"],
            str(s["seeds"]),
            _ms(s["lr"], ".3g"),
            _ms(s["lr_find_seconds"], ".0f"),
            _ms(s["wall_seconds"], ".0f"),
            _ms(s["test_balanced_accuracy"]),
            _ms(s["test_macro_f1"]),
        ]
        for s in result["summary"]
    ]
    return "\n".join(
        [
            "# skinflow vs fastai (`make bench-fastai`)",
            "",
            f"Command: `{result['command']}`",
            "",
            f"Machine: {m['cpu_model']}, {m['usable_cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
            f"fastai {result['fastai_version']}; AMP here: {result['cpu_precision']['amp_precision']}; load average "
            f"{m['load_average_at_start']} at start, {result['load_average_at_end']} at end; {m['date']}, commit "
            f"{m['git_commit'][:10]}; total {result['wall_seconds']:.0f} s.",
            "",
            f"Same data as the pretrained benchmark: isic9 at {p['size']} px, {result['data']['counts']['train']} train / "
            f"{result['data']['counts']['val']} val / {result['data']['counts']['test']} test images; ImageNet "
            f"EfficientNet-Lite0 from the installed package on both sides; {p['epochs']} epochs, batch {p['batch']}; "
            f"seeds {', '.join(map(str, p['seeds']))}, interleaved. Wall time = LR finder + training (with per-epoch "
            "validation), mean ± sd over seeds; LR = what each side's finder chose.",
            "",
            md_table(["side", "seeds", "LR", "LR finder s", "wall s", "test bal. acc", "test macro-F1"], rows),
            "",
            "What this means:",
            "",
            *goal_rows(result["summary"]),
        ]
    )


# --- main ---------------------------------------------------------------------------------------


def default_variant(path: Path = PRETRAINED_JSON) -> str:
    """The pretrained benchmark's best variant, else the thesis's scheme."""
    try:
        return json.loads(path.read_text())["best_variant"]
    except (OSError, KeyError, ValueError):
        return "sgdr_dlr_clm"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    ap.add_argument("--variant", default=None, help="skinflow's variant (default: the pretrained bench's best)")
    ap.add_argument("--no-fp32", action="store_true", help="skip skinflow's fp32 (precision-matched) rows")
    ap.add_argument("--size", type=int, default=Profile.size)
    ap.add_argument("--per-class", type=int, default=Profile.per_class)
    ap.add_argument("--val-per-class", type=int, default=Profile.val_per_class)
    ap.add_argument("--epochs", type=int, default=Profile.epochs)
    ap.add_argument("--batch", type=int, default=Profile.batch)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--work-dir", type=Path, default=None)
    args = ap.parse_args(argv)
    import fastai

    profile = {
        "size": args.size,
        "per_class": args.per_class,
        "val_per_class": args.val_per_class,
        "epochs": args.epochs,
        "batch": args.batch,
        "seeds": [int(s) for s in args.seeds.split(",")],
    }
    variant = args.variant or default_variant()
    machine = machine_description(configure_torch(args.threads))
    start = time.perf_counter()
    work = args.work_dir or args.out.parent / "out" / "work"
    data = isic9_data(args.size, args.per_class, args.val_per_class, work)
    sides = [("fastai", None), ("skinflow", True)] + ([] if args.no_fp32 else [("skinflow", False)])
    runs = []
    for i, seed in enumerate(profile["seeds"]):
        for side, amp in sides[i % len(sides) :] + sides[: i % len(sides)]:
            run = (
                run_fastai(data, args.epochs, args.batch, seed, work)
                if side == "fastai"
                else run_skinflow(data, variant, bool(amp), args.epochs, args.batch, seed)
            )
            runs.append(run)
            _log(
                f"seed {seed} {side_key(run):40s} lr {run['lr']:.3g} wall {run['wall_seconds']:.0f}s "
                f"(finder {run['lr_find_seconds']:.0f}s) test bal.acc {run['test_balanced_accuracy']:.3f}"
            )
    result = {
        "command": command_line(),
        "machine": machine,
        "cpu_precision": cpu_precision(),
        "fastai_version": fastai.__version__,
        "profile": profile,
        "variant": variant,
        "data": data["info"],
        "runs": runs,
        "summary": summarise(runs),
        "wall_seconds": time.perf_counter() - start,
        "load_average_at_end": load_average(),
    }
    write_json(result, args.out.parent / "out" / "bench_fastai.json")
    text = args.out.read_text() if args.out.is_file() else ""
    args.out.write_text(replace_section(text, SECTION, render(result)))
    _log(f"wrote section '{SECTION}' of {args.out}")
    return result


if __name__ == "__main__":
    main()
