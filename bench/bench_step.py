"""One training step's time per arch x memory format x precision on this CPU (``make bench-step``).

The measurement behind two defaults: ``TrainConfig.channels_last`` and the depthwise rule of
:func:`ml.train.precision.choose_precision` (EfficientNet-Lite trains bf16 on a CPU only with
AMX). Each cell builds the model, takes ``--warmup`` steps of :class:`ml.train.step.TrainStep`
(AdamW, cross-entropy) on one random batch, then times ``--steps`` more; the cells run in
interleaved rounds (``--rounds``) and the table gives each cell's median over the rounds, so
that a drift of the machine's speed falls on every cell alike. bf16 is forced (``force``), so
that the table shows what the rule decides against.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import command_line, load_average, machine_description, md_table, replace_section, write_json

REPO = Path(__file__).resolve().parents[1]
SECTION = "step"
FORMATS = ("contiguous", "channels_last")
PRECISIONS = ("fp32", "bf16")


def step_seconds(arch: str, fmt: str, precision: str, size: int, batch: int, warmup: int, steps: int) -> float:
    """Mean seconds of one training step of ``arch`` (9 classes) at ``size`` px, batch ``batch``."""
    import torch
    import torch.nn.functional as F

    from ml.train.models import build_model, place_model
    from ml.train.step import TrainStep

    torch.manual_seed(0)
    cpu = torch.device("cpu")
    model = place_model(build_model(arch, 9), cpu, channels_last=fmt == "channels_last")
    x = torch.randn(batch, 3, size, size)
    if fmt == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 9, (batch,))
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    step = TrainStep(model, opt, F.cross_entropy, device=cpu, amp_dtype=torch.bfloat16 if precision == "bf16" else None)
    model.train()
    for _ in range(warmup):
        step(x, y)
    start = time.perf_counter()
    for _ in range(steps):
        step(x, y)
    return (time.perf_counter() - start) / steps


def render(result: dict[str, Any]) -> str:
    m = result["machine"]
    rows = []
    for arch in result["archs"]:
        cells = {(c["format"], c["precision"]): c["median_s"] for c in result["cells"] if c["arch"] == arch}
        base = cells[("contiguous", "fp32")]
        for (fmt, prec), sec in cells.items():
            rows.append([arch, fmt, prec, f"{sec:.3f}", f"{base / sec:.2f}x"])
    return "\n".join(
        [
            "## One training step: arch x memory format x precision (`make bench-step`)",
            "",
            f"Command: `{result['command']}`",
            "",
            f"Machine: {m['cpu_model']}, {m['usable_cores']} cores, torch {m['torch']}, {m['torch_threads']} "
            f"threads; native bf16 flags: {result['bf16_flags'] or 'none'}; load average {result['load_at_start']} "
            f"at start, {result['load_at_end']} at end; {m['date']}, commit {m['git_commit'][:10]}. "
            f"Batch {result['batch']} at {result['size']} px, AdamW; median of {result['rounds']} interleaved rounds "
            f"of {result['steps']} timed steps. bf16 = autocast, forced.",
            "",
            md_table(["arch", "memory format", "precision", "s / step", "speed vs contiguous fp32"], rows),
            "",
            "What skinflow does with it: `channels_last` is the default; EfficientNet-Lite trains bf16 on a CPU "
            "only with AMX (`ml/train/precision.py`); other archs with native bf16 units.",
        ]
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default="efficientnet_lite0,resnet18")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "RESULTS.md")
    args = ap.parse_args(argv)
    import torch

    from ml.train.precision import NATIVE_BF16_FLAGS, machine_cpu_flags

    torch.set_flush_denormal(True)
    archs = [a for a in args.archs.split(",") if a]
    grid = [(a, f, p) for a in archs for f in FORMATS for p in PRECISIONS]
    load_start, times = load_average(), {cell: [] for cell in grid}
    for r in range(args.rounds):
        for cell in grid if r % 2 == 0 else grid[::-1]:
            times[cell].append(step_seconds(*cell, args.size, args.batch, args.warmup, args.steps))
            print(f"[bench-step] round {r + 1}: {' '.join(cell)} {times[cell][-1]:.3f} s", flush=True)
    result = {
        "command": command_line(None if argv is None else ["bench/bench_step.py", *argv]),
        "machine": machine_description({"threads": torch.get_num_threads(), "flush_denormal": True}),
        "bf16_flags": " + ".join(sorted(NATIVE_BF16_FLAGS & machine_cpu_flags())),
        "load_at_start": load_start,
        "load_at_end": load_average(),
        "archs": archs,
        **{k: getattr(args, k) for k in ("size", "batch", "steps", "rounds")},
        "cells": [
            {"arch": a, "format": f, "precision": p, "median_s": statistics.median(t), "all_s": t}
            for (a, f, p), t in times.items()
        ],
    }
    write_json(result, REPO / "bench" / "out" / "bench_step.json")
    args.out.write_text(replace_section(args.out.read_text(), SECTION, render(result)))
    print(render(result))
    return result


if __name__ == "__main__":
    main()
