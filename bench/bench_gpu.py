"""GPU training throughput: ``ml.train.loop.fit`` vs a bare PyTorch loop, per image size and precision.

Meant to run once on a rented CUDA machine through ``bench/gpu_check.sh`` (which also runs the
gpu-marked tests).

For every (size, batch) x {fp32, AMP}, after one warm-up of each, ``--repeats`` interleaved rounds of:

- **bare**: ``zero_grad; cross_entropy(model(x), y); backward; step`` (SGD momentum, one parameter
  group) over normalised float batches already resident on the device: the compute ceiling;
- **bare+pipeline**: the same bare loop fed by ``ml.train.loop.TrainBatches`` (the input pipeline of
  ``fit``: sampler, uint8 gather on the CPU, copy to the device, normalise and augment there);
- **fit**: ``ml.train.loop.fit``, 1 epoch of ``sgdr_dlr_clm`` over the same images, timed by a callback
  from ``on_train_begin`` to the last step's ``on_snapshot`` (training phase only: no model
  construction, no ``channel_stats``, no validation).

Every clock stop is preceded by ``torch.cuda.synchronize()`` on CUDA. Medians are reported, with
min-max. Then a loader-only line per size (``TrainBatches`` with no model) vs what ``fit`` consumes.

Imports only torch/torchvision/numpy/scikit-learn/tqdm (through ``ml.train.loop``) and the standard
library: no pydantic, mlflow, prefect, ...

Run: ``python3 -m bench.bench_gpu --json OUT.json --markdown OUT.md`` (defaults under bench/out/gpu/).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.bench_train import _jsonable, _tile
from bench.common import (
    command_line,
    configure_torch,
    machine_description,
    md_table,
    median,
    write_json,
)
from ml.train.batches import TrainBatches
from ml.train.config import TrainConfig
from ml.train.loop import Callback, fit
from ml.train.models import build_model
from ml.train.precision import choose_precision, resolve_device
from ml.train.transforms import channel_stats, to_float_batch

REPO = Path(__file__).resolve().parents[1]

TITLE = "## GPU throughput (`bench/gpu_check.sh`)"
SCHEDULE = "sgdr_dlr_clm"
LR = 0.01
DEFAULT_OUT = REPO / "bench" / "out" / "gpu"
FULL = {"sizes": (64, 224), "batches": (256, 128), "steps": 24, "repeats": 3}
BASE_IMAGES = 256  # distinct synthetic images per size; tiled up to steps x batch


def _log(msg: str) -> None:
    print(f"[bench-gpu {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- data ------------------------------------------------------------------------------------


def synthetic_images(n: int, size: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 NHWC noise tinted with a per-class colour plus a bright class-coloured square
    (learnable, so losses stay finite and fall; for throughput the content does not matter)."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % num_classes).astype(np.int64)
    palette = rng.integers(0, 3, size=num_classes)  # which channel carries the class
    images = rng.integers(40, 110, size=(n, size, size, 3), dtype=np.uint8)
    side = max(2, size * 5 // 8)
    for img, c in zip(images, labels):
        ch = palette[c]
        img[..., ch] += np.uint8(30 + 10 * (int(c) % 4))
        y, x = rng.integers(0, size - side + 1, size=2)
        img[y : y + side, x : x + side, ch] = 240
    return images, labels


# --- timing ----------------------------------------------------------------------------------


def source_digest() -> str:
    """SHA-256 (12 hex) over ml/*.py and bench/*.py, in name order: identifies the code that ran
    when the tree was copied without its current git metadata."""
    import hashlib

    h = hashlib.sha256()
    for path in sorted([*REPO.glob("ml/*.py"), *REPO.glob("bench/*.py")]):
        h.update(path.relative_to(REPO).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


class SyncedTrainTimer(Callback):
    """fit's training phase: on_train_begin .. the last step's on_snapshot, device synchronised at
    both ends (fit itself never calls torch.cuda.synchronize)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.begin: float | None = None
        self.end: float | None = None
        self.steps = 0

    def on_train_begin(self, state: Any) -> None:
        sync(self.device)
        self.begin = time.perf_counter()

    def on_snapshot(self, index: int, iteration: int, state: Any) -> None:
        sync(self.device)
        self.end = time.perf_counter()
        self.steps = iteration


def _bare_steps(model: torch.nn.Module, batches: Any, device: torch.device, dtype: torch.dtype | None) -> int:
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16 and device.type == "cuda")
    steps = 0
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        steps += 1
    return steps


# --- one configuration -------------------------------------------------------------------------


def measure_config(
    images: np.ndarray,
    labels: np.ndarray,
    norm: Any,
    num_classes: int,
    size: int,
    batch: int,
    precision: str,
    args: argparse.Namespace,
    device: torch.device,
    deadline: float,
) -> dict[str, Any]:
    """bare / bare+pipeline / fit for one (size, batch, precision): warm-up, then interleaved repeats."""
    chosen = choose_precision(device, precision == "amp")
    dtype = chosen.dtype
    n = len(labels)
    steps = n // batch
    val = (images[:32], labels[:32])
    classes = [f"c{i}" for i in range(num_classes)]
    xs = [to_float_batch(torch.from_numpy(images[i : i + batch]).to(device), *norm) for i in range(0, n, batch)]
    ys = [torch.from_numpy(labels[i : i + batch]).to(device) for i in range(0, n, batch)]
    # the bare loop's batches stay allocated during every run: subtract them from the peaks
    staged = sum(t.numel() * t.element_size() for t in xs + ys) / 2**30 if device.type == "cuda" else None

    def new_model() -> torch.nn.Module:
        torch.manual_seed(args.seed)
        return build_model(args.arch, num_classes).to(device).train()

    def cfg() -> TrainConfig:
        return TrainConfig(
            arch=args.arch,
            schedule=SCHEDULE,
            lr=LR,
            epochs=1,
            batch_size=batch,
            amp=precision == "amp",
            snapshots=1,
            seed=args.seed,
            device=str(device),
            progress=False,
        )

    def bare() -> dict[str, Any]:
        model = new_model()
        reset_peak(device)
        sync(device)
        start = time.perf_counter()
        done = _bare_steps(model, zip(xs, ys), device, dtype)
        sync(device)
        return {"seconds": time.perf_counter() - start, "steps": done, "peak_gib": peak_gib(device)}

    def pipeline() -> dict[str, Any]:
        model = new_model()
        batches = TrainBatches((images, labels), num_classes, cfg(), norm, device)
        reset_peak(device)
        sync(device)
        start = time.perf_counter()
        done = _bare_steps(model, batches, device, dtype)
        sync(device)
        return {"seconds": time.perf_counter() - start, "steps": done, "peak_gib": peak_gib(device)}

    def ours() -> dict[str, Any]:
        timer = SyncedTrainTimer(device)
        reset_peak(device)
        result = fit((images, labels), val, classes, cfg(), callbacks=[timer])
        if timer.begin is None or timer.end is None:
            raise RuntimeError("fit's last step raised no on_snapshot: the timing window is undefined")
        out = {
            "seconds": timer.end - timer.begin,
            "steps": timer.steps,
            "peak_gib": peak_gib(device),
            "epoch_seconds": result.history[0]["epoch_seconds"],
            "amp_dtype": result.amp_dtype,
            "final_train_loss": result.history[0]["train_loss"],
        }
        del result
        return out

    kinds: dict[str, Callable[[], dict[str, Any]]] = {"bare": bare, "pipeline": pipeline, "fit": ours}
    for fn in kinds.values():  # warm-up: CUDA context, cuDNN handles/plans, allocator, autotuning if enabled
        fn()
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    for r in range(args.repeats):
        if r > 0 and time.perf_counter() > deadline:
            _log(f"time budget reached: {r} of {args.repeats} repeats for {size}px {precision}")
            break
        for name, fn in kinds.items():  # ABC ABC ...
            runs[name].append(fn())
    images_per_run = steps * batch
    out: dict[str, Any] = {
        "size": size,
        "batch": batch,
        "precision": precision,
        "amp_dtype": chosen.dtype_name,
        "steps": steps,
        "images_per_run": images_per_run,
        "repeats": len(runs["fit"]),
        "staged_batches_gib": staged,
    }
    for name, rs in runs.items():
        secs = [x["seconds"] for x in rs]
        if any(x["steps"] != steps for x in rs):
            raise RuntimeError(f"{name}: ran {[x['steps'] for x in rs]} steps, expected {steps}")
        peaks = [x["peak_gib"] - staged for x in rs if x["peak_gib"] is not None and staged is not None]
        out[name] = {
            "seconds": secs,
            "images_per_s": images_per_run / median(secs),
            "images_per_s_min": images_per_run / max(secs),
            "images_per_s_max": images_per_run / min(secs),
            "peak_gib": max(peaks) if peaks else None,
        }
    out["fit"]["epoch_seconds"] = [x["epoch_seconds"] for x in runs["fit"]]
    out["fit"]["epoch_images_per_s"] = images_per_run / median(out["fit"]["epoch_seconds"])
    out["fit"]["final_train_loss"] = [x["final_train_loss"] for x in runs["fit"]]
    b = out["bare"]["images_per_s"]
    out["ratio_fit_bare"] = out["fit"]["images_per_s"] / b
    out["ratio_fit_bare_incl_val"] = out["fit"]["epoch_images_per_s"] / b
    out["ratio_pipeline_bare"] = out["pipeline"]["images_per_s"] / b
    out["ratio_fit_pipeline"] = out["fit"]["images_per_s"] / out["pipeline"]["images_per_s"]
    _log(
        f"{size}px b{batch} {precision}: bare {b:.0f} img/s, bare+pipeline {out['pipeline']['images_per_s']:.0f}, "
        f"fit {out['fit']['images_per_s']:.0f} (fit/bare {out['ratio_fit_bare']:.3f})"
    )
    return out


def measure_loader(
    images: np.ndarray,
    labels: np.ndarray,
    norm: Any,
    num_classes: int,
    batch: int,
    args: argparse.Namespace,
    device: torch.device,
) -> dict[str, Any]:
    """TrainBatches with no model (sampler + gather + copy + normalise + augment), synchronised."""
    cfg = TrainConfig(
        arch=args.arch,
        batch_size=batch,
        seed=args.seed,
        device=str(device),
        progress=False,
    )
    batches = TrainBatches((images, labels), num_classes, cfg, norm, device)

    def once() -> tuple[float, int]:
        sync(device)
        start = time.perf_counter()
        count = sum(len(y) for _, y in batches)
        sync(device)
        return time.perf_counter() - start, count

    once()
    times, count = [], 0
    for _ in range(max(args.repeats, 2)):
        t, count = once()
        times.append(t)
    return {
        "images_per_epoch": count,
        "seconds": times,
        "images_per_s": count / median(times),
        "num_workers": cfg.num_workers,
    }


# --- machine ---------------------------------------------------------------------------------


def _nvidia_smi() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,power.limit", "--format=csv,noheader"],
            check=False,
            capture_output=True,
            text=True,
            timeout=20,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def device_description(device: torch.device) -> dict[str, Any]:
    d: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cudnn_version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
        "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "amp_dtype": choose_precision(device, True).dtype_name,
    }
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        d.update(
            {
                "gpu_name": torch.cuda.get_device_name(device),
                "gpu_capability": ".".join(map(str, torch.cuda.get_device_capability(device))),
                "gpu_memory_gib": round(p.total_memory / 2**30, 1),
                "gpu_count": torch.cuda.device_count(),
                "bf16_supported": torch.cuda.is_bf16_supported(),
                "nvidia_smi": _nvidia_smi(),
            }
        )
    return d


# --- report ----------------------------------------------------------------------------------


def _rate(side: dict[str, Any]) -> str:
    return f"{side['images_per_s']:.0f} ({side['images_per_s_min']:.0f}–{side['images_per_s_max']:.0f})"


def _gib(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}"


def results_table(configs: list[dict[str, Any]]) -> str:
    rows = []
    for c in configs:
        prec = c["precision"] + (f" ({c['amp_dtype']})" if c.get("amp_dtype") else "")
        if "error" in c:
            rows.append([str(c["size"]), str(c["batch"]), prec, "—", "failed: " + c["error"][:120]] + [""] * 5)
            continue
        rows.append(
            [
                str(c["size"]),
                str(c["batch"]),
                prec,
                f"{c['steps']} x {c['batch']} x {c['repeats']}",
                _rate(c["bare"]),
                _rate(c["pipeline"]),
                _rate(c["fit"]),
                f"**{c['ratio_fit_bare']:.3f}**",
                f"{c['ratio_fit_bare_incl_val']:.3f}",
                f"{_gib(c['bare']['peak_gib'])} / {_gib(c['fit']['peak_gib'])}",
            ]
        )
    return md_table(
        [
            "px",
            "batch",
            "precision",
            "steps x batch x repeats",
            "bare img/s (min–max)",
            "bare+pipeline img/s",
            "fit img/s",
            "fit / bare",
            "fit incl. val / bare",
            "peak GiB bare / fit*",
        ],
        rows,
    )


def loader_lines(result: dict[str, Any]) -> list[str]:
    lines = []
    for size, ld in result["loader"].items():
        if "error" in ld:
            lines.append(f"- Loader only, {size} px: failed ({ld['error'][:160]}).")
            continue
        fits = [c for c in result["configs"] if str(c["size"]) == str(size) and "error" not in c]
        cons = ", ".join(
            f"{c['precision']} {c['fit']['images_per_s']:.0f} img/s "
            f"({ld['images_per_s'] / c['fit']['images_per_s']:.1f}x)"
            for c in fits
        )
        lines.append(
            f"- Loader only (`TrainBatches`, num_workers={ld['num_workers']}, no model), {size} px batch "
            f"{ld['batch']}: **{ld['images_per_s']:.0f} img/s** vs what fit consumes: {cons or '—'}."
        )
    return lines


def reading(result: dict[str, Any]) -> str:
    """One paragraph computed from the numbers (no fixed conclusions)."""
    ok = [c for c in result["configs"] if "error" not in c]
    dev = result["device"]
    where = dev.get("gpu_name") or dev["device"]
    if not ok:
        return f"No configuration completed on {where}; see the errors in the table and the JSON."
    lo = min(ok, key=lambda c: c["ratio_fit_bare"])
    hi = max(ok, key=lambda c: c["ratio_fit_bare"])
    parts = [
        (
            f"On {where}, `fit` (training phase of 1 epoch of {SCHEDULE}) ran at "
            f"{lo['ratio_fit_bare']:.2f}–{hi['ratio_fit_bare']:.2f}x the bare loop's throughput over {len(ok)} "
            f"configurations (lowest at {lo['size']} px {lo['precision']}: {lo['fit']['images_per_s']:.0f} vs "
            f"{lo['bare']['images_per_s']:.0f} img/s; target >= 0.95)."
        )
    ]
    pipe = [c["ratio_pipeline_bare"] for c in ok]
    rest = [c["ratio_fit_pipeline"] for c in ok]
    parts.append(
        f"The bare loop fed by fit's own input pipeline (`TrainBatches`: CPU uint8 gather, copy, "
        f"normalise and augment on the device) reached {min(pipe):.2f}–{max(pipe):.2f}x the bare loop, and "
        f"fit reached {min(rest):.2f}–{max(rest):.2f}x that pipeline-fed loop; the second factor is "
        "what fit's step adds beyond the input pipeline (the loss read back every 16 steps on CUDA, "
        "every step on the CPU; the per-step scheduler and LR trace over six parameter groups; the "
        "end-of-cycle snapshot copy to the CPU)."
    )
    amp = []
    for c in ok:
        if c["precision"] != "amp":
            continue
        base = next((f for f in ok if f["precision"] == "fp32" and f["size"] == c["size"]), None)
        if base is not None:
            amp.append(
                f"{c['size']} px: bare {c['bare']['images_per_s'] / base['bare']['images_per_s']:.2f}x, "
                f"fit {c['fit']['images_per_s'] / base['fit']['images_per_s']:.2f}x"
            )
    if amp:
        parts.append(f"AMP ({ok[-1].get('amp_dtype') or dev['amp_dtype']}) over fp32: " + "; ".join(amp) + ".")
    worst = []
    for size, ld in result["loader"].items():
        fits = [c for c in ok if str(c["size"]) == str(size)]
        if "error" not in ld and fits:
            worst.append((ld["images_per_s"] / max(c["fit"]["images_per_s"] for c in fits), size))
    if worst:
        r, size = min(worst)
        parts.append(
            f"The loader alone delivers at least {r:.1f}x what fit consumes (tightest at {size} px)"
            + ("; it runs in series with the step (num_workers=0), so its time adds to the step's." if r < 5 else ".")
        )
    parts.append(
        f"Medians of {max(c['repeats'] for c in ok)} interleaved repeats after one warm-up, "
        f"cudnn.benchmark={dev['cudnn_benchmark']}; one run on one machine."
    )
    return " ".join(parts)


def render_markdown(result: dict[str, Any]) -> str:
    m, d, s = result["machine"], result["device"], result["settings"]
    rows = [["device", d["device"]]]
    if d.get("gpu_name"):
        rows += [
            [
                "GPU",
                (f"{d['gpu_name']} (sm {d['gpu_capability']}, {d['gpu_memory_gib']} GiB, {d['gpu_count']} visible)"),
            ],
            ["nvidia-smi", d.get("nvidia_smi") or "—"],
        ]
    rows += [
        ["CPU", f"{m['cpu_model']} ({m['usable_cores']} usable cores; torch threads {m['torch_threads']})"],
        ["python / torch / numpy", f"{m['python']} / {d['torch']} / {m['numpy']}"],
        ["CUDA (torch build) / cuDNN", f"{d['torch_cuda']} / {d['cudnn_version']}"],
        [
            "cudnn.benchmark / allow_tf32 (cudnn, matmul)",
            f"{d['cudnn_benchmark']} / {d['cudnn_allow_tf32']}, {d['matmul_allow_tf32']}",
        ],
        ["AMP dtype", d["amp_dtype"]],
        ["date (UTC) / git commit", f"{m['date']} / {m['git_commit']}"],
        ["source digest (ml/*.py, bench/*.py)", result.get("source_digest", "—")],
        ["bench wall time", f"{result.get('wall_seconds', 0):.0f} s"],
    ]
    parts = [
        TITLE,
        "",
        f"Command: `{result['command']}`",
        "",
        md_table(["item", "value"], rows),
        "",
        (
            f"Model {s['arch']}, {s['num_classes']} classes, synthetic uint8 images ({BASE_IMAGES} distinct per "
            f"size, tiled to steps x batch). **bare**: zero_grad / forward / cross-entropy / backward / SGD step over "
            "normalised batches already on the device. **bare+pipeline**: the same loop fed by `ml.train.loop.TrainBatches`. "
            f"**fit**: `ml.train.loop.fit`, 1 epoch of {SCHEDULE} (lr {LR}), timed from `on_train_begin` to the last "
            "step's `on_snapshot` (model build, `channel_stats` and validation excluded; \"incl. val\" uses fit's "
            "`epoch_seconds`). Clock stops after `torch.cuda.synchronize()`. img/s = median (min–max)."
        ),
        "",
        results_table(result["configs"]),
        "",
        "\\* `torch.cuda.max_memory_allocated` during the run, minus the bare loop's staged batches (resident "
        "throughout; `staged_batches_gib` in the JSON).",
        "",
        *loader_lines(result),
        "",
        *(
            [f"Not run (time budget {s['budget_s']:.0f} s): {', '.join(result['skipped'])}.", ""]
            if result["skipped"]
            else []
        ),
        reading(result),
        "",
    ]
    return "\n".join(parts)


# --- main ------------------------------------------------------------------------------------


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cuda", "cpu"),
        help="auto (default) = cuda when available, else cpu",
    )
    ap.add_argument("--sizes", type=_ints, default=None, help=f"comma list of px (default {FULL['sizes']})")
    ap.add_argument("--batches", type=_ints, default=None, help=f"comma list, one per size (default {FULL['batches']})")
    ap.add_argument("--precisions", default="fp32,amp", help="comma list (default fp32,amp)")
    ap.add_argument("--steps", type=int, default=None, help=f"training steps per run (default {FULL['steps']})")
    ap.add_argument("--repeats", type=int, default=None, help=f"interleaved repeats (default {FULL['repeats']})")
    ap.add_argument("--arch", default="resnet18", help="torchvision arch known to ml.train.models (default resnet18)")
    ap.add_argument("--num-classes", type=int, default=10, help="default 10")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: all usable cores)",
    )
    ap.add_argument(
        "--budget-s",
        type=float,
        default=240.0,
        help="no new configuration (or repeat) starts after this many seconds (default 240); results so far are kept",
    )
    ap.add_argument("--seed", type=int, default=0, help="default 0")
    ap.add_argument(
        "--json",
        type=Path,
        default=DEFAULT_OUT / "bench_gpu.json",
        help="raw results (default bench/out/gpu/bench_gpu.json)",
    )
    ap.add_argument(
        "--markdown",
        type=Path,
        default=DEFAULT_OUT / "gpu_section.md",
        help="the RESULTS.md-style section, also printed (default bench/out/gpu/gpu_section.md)",
    )
    args = ap.parse_args(argv)
    args.sizes = args.sizes or FULL["sizes"]
    args.batches = args.batches or FULL["batches"]
    args.steps = args.steps or FULL["steps"]
    args.repeats = args.repeats or FULL["repeats"]
    if len(args.batches) != len(args.sizes):
        ap.error(f"--batches needs one value per size ({len(args.sizes)}), got {len(args.batches)}")
    args.precisions = tuple(p.strip() for p in args.precisions.split(",") if p.strip())
    if not set(args.precisions) <= {"fp32", "amp"}:
        ap.error("--precisions: fp32 and/or amp")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but torch.cuda.is_available() is False")
    return args


def save(result: dict[str, Any], args: argparse.Namespace) -> str:
    write_json(_jsonable(result), args.json)
    text = render_markdown(result)
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text(text)
    return text


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()
    deadline = started + args.budget_s
    device = resolve_device(args.device)
    torch_settings = configure_torch(args.threads)
    result: dict[str, Any] = {
        "command": command_line([sys.argv[0], *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine_description(torch_settings),
        # the device's copy of the tree may carry an older .git: this names the code that ran
        "source_digest": source_digest(),
        "device": device_description(device),
        "settings": {
            "arch": args.arch,
            "num_classes": args.num_classes,
            "sizes": args.sizes,
            "batches": args.batches,
            "precisions": args.precisions,
            "steps": args.steps,
            "repeats": args.repeats,
            "schedule": SCHEDULE,
            "lr": LR,
            "seed": args.seed,
            "budget_s": args.budget_s,
        },
        "configs": [],
        "loader": {},
        "skipped": [],
    }
    _log(
        f"device {device} ({result['device'].get('gpu_name', 'no GPU')}), torch {torch.__version__}, "
        f"CUDA {torch.version.cuda}, cudnn.benchmark={torch.backends.cudnn.benchmark}, "
        f"threads {torch_settings['threads']}"
    )
    for size, batch in zip(args.sizes, args.batches):
        if time.perf_counter() > deadline:
            result["skipped"].append(f"{size}px: time budget")
            continue
        base_images, base_labels = synthetic_images(
            min(BASE_IMAGES, args.steps * batch), size, args.num_classes, args.seed
        )
        images, labels = _tile((base_images, base_labels), args.steps * batch)
        norm = channel_stats(images)
        for precision in args.precisions:
            if time.perf_counter() > deadline:
                result["skipped"].append(f"{size}px {precision}: time budget")
                continue
            try:
                result["configs"].append(
                    measure_config(
                        images, labels, norm, args.num_classes, size, batch, precision, args, device, deadline
                    )
                )
            except (RuntimeError, ValueError, FloatingPointError) as exc:  # e.g. CUDA OOM: keep the rest
                _log(f"{size}px {precision}: FAILED {type(exc).__name__}: {exc}")
                result["configs"].append(
                    {"size": size, "batch": batch, "precision": precision, "error": f"{type(exc).__name__}: {exc}"}
                )
            if device.type == "cuda":
                torch.cuda.empty_cache()
        try:
            ld = measure_loader(images, labels, norm, args.num_classes, batch, args, device)
            result["loader"][str(size)] = {"batch": batch, **ld}
            _log(f"{size}px loader only: {ld['images_per_s']:.0f} img/s")
        except (RuntimeError, ValueError) as exc:
            result["loader"][str(size)] = {"batch": batch, "error": f"{type(exc).__name__}: {exc}"}
        result["wall_seconds"] = time.perf_counter() - started
        save(result, args)  # partial results survive a later timeout
    result["wall_seconds"] = time.perf_counter() - started
    result["finished_utc"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    text = save(result, args)
    print(text, flush=True)
    _log(f"wrote {args.json} and {args.markdown} ({result['wall_seconds']:.0f}s)")
    return result


if __name__ == "__main__":
    sys.exit(1 if any("error" in c for c in main()["configs"]) else 0)
