"""Rapid on real data: time-to-accuracy of skinflow against fastai on the whole isic9 training
set, ImageNet EfficientNet-Lite0 (the installed package's weights) at 128 px, tested on the
shipped test images. ``make bench-rapid``.

Each run is a fresh process timed from outside, the way a user runs it, start-up included:

- fastai 2.8 (bench-only extra): ``python -m bench.bench_rapid --one fastai``: decode the images,
  ``lr_find()`` and ``fit_one_cycle(epochs, lr_max=valley)`` (bench/bench_fastai.py's
  ``run_fastai``: flips and zoom 1.1, batch 32, fp32, its CPU precision);
- skinflow: ``skinflow train --epochs N --seed S`` after ``skinflow init --data isic9`` wrote the
  project file, so the recipe is the one ``init`` proposes for photographs (ml/project.py
  ``PRETRAINED_RECIPE``): manifest, decode cache, LR range test, fit and test included. Each run
  gets an empty data root (no cache carried over); Prefect's database is prepared once before the
  timings (a user's first run pays it once). ``skinflow`` measures its range test every time
  (``--fresh-lr-test``: a team's first run on new data); ``skinflow-rerun`` is the same command
  run again on the same data, which takes the stored range test (README, "one project file").

Both sides train on the same 5/6 of isic9's training folder and select on the same 1/6 (the
manifest's seeded split; fastai gets those images through ``bench_pretrained.isic9_data``). Budgets
and seeds are interleaved; the order of the sides rotates with the seed. Reported: test balanced
accuracy and macro-F1 against wall seconds (table and ``bench/rapid_curve.png``), and the goal
line: the wall time skinflow needs to reach fastai's balanced accuracy at each fastai budget, as a
ratio of fastai's time (linear between skinflow's budgets, never earlier than its first budget's
run; "not reached" when its best is below).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import load_average, machine_description, md_table, replace_section, write_json

REPO = Path(__file__).resolve().parents[1]
ISIC9 = REPO.parent / "shared" / "data" / "isic9"
SECTION = "rapid"
GOAL = 0.5  # skinflow reaches fastai's balanced accuracy in at most half its wall time
SIZE, BATCH = 128, 32
SKINFLOW = str(Path(sys.executable).parent / "skinflow")


def _log(msg: str) -> None:
    print(f"[bench-rapid {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _last_json(text: str) -> dict[str, Any]:
    """The last top-level JSON object a command printed."""
    start = text.rfind("\n{")
    return json.loads(text[start + 1 if start >= 0 else text.find("{") :])


# --- one run (a fresh process) -------------------------------------------------------------------


def one_fastai(epochs: int, seed: int, work: Path) -> dict[str, Any]:
    """fastai's side in this process (called through ``--one fastai``): data, finder, fit, test."""
    from bench.bench_fastai import run_fastai
    from bench.bench_pretrained import isic9_data

    data = isic9_data(SIZE, None, None, work)
    return run_fastai(data, epochs, BATCH, seed, work)


def run_side(side: str, epochs: int, seed: int, work: Path, env: dict[str, str], extra: Sequence[str] = ()) -> dict:
    """One timed run of ``side`` in a fresh process; its test figures and wall seconds."""
    work.mkdir(parents=True, exist_ok=True)
    if side == "fastai":
        cmd = [sys.executable, "-m", "bench.bench_rapid", "--one", "fastai", "--epochs", str(epochs)]
        cmd += ["--seeds", str(seed), "--work-dir", str(work)]
    else:
        fresh = [] if side == "skinflow-rerun" else ["--fresh-lr-test"]
        cmd = [SKINFLOW, "train", "--epochs", str(epochs), "--seed", str(seed), "--out", str(work / "out"), *fresh]
        cmd += list(extra)
    run_env = {**env, "SKINFLOW_DATA_ROOT": str(work / "data"), "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db"}
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=run_env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    (work / "stdout.txt").write_text(done.stdout)
    (work / "stderr.txt").write_text(done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"{side} run failed ({done.returncode}); see {work}/stderr.txt: {done.stderr[-800:]}")
    out = _last_json(done.stdout)
    if side == "fastai":
        acc, f1 = out["test_balanced_accuracy"], out["test_macro_f1"]
    else:
        if out["eval_split"] != "test":
            raise SystemExit(f"skinflow evaluated on {out['eval_split']}, not the shipped test images")
        acc, f1 = out["balanced_accuracy"], out["macro_f1"]
    return {
        "side": side + ("-fp32" if "--no-amp" in extra else ""),
        "epochs": epochs,
        "seed": seed,
        "wall_seconds": wall,
        "test_balanced_accuracy": float(acc),
        "test_macro_f1": float(f1),
        "lr": out.get("lr"),
        "precision": out.get("amp_dtype") or out.get("precision") or "fp32",
        "range_test": "" if side == "fastai" else ("reused" if out.get("lr_range_reused") else "measured"),
    }


# --- summary --------------------------------------------------------------------------------------


def points(runs: list[dict], side: str) -> list[tuple[int, float, float, float]]:
    """``(epochs, mean wall s, mean balanced accuracy, mean macro-F1)`` per budget of ``side``."""
    out = []
    for epochs in sorted({r["epochs"] for r in runs if r["side"] == side}):
        group = [r for r in runs if r["side"] == side and r["epochs"] == epochs]
        out.append(
            (
                epochs,
                statistics.fmean(r["wall_seconds"] for r in group),
                statistics.fmean(r["test_balanced_accuracy"] for r in group),
                statistics.fmean(r["test_macro_f1"] for r in group),
            )
        )
    return out


def time_to_reach(curve: list[tuple[int, float, float, float]], target: float) -> float | None:
    """Wall seconds at which ``curve`` (by budget) first reaches ``target`` accuracy: the first
    budget's time when that budget already reaches it (no run stops sooner: start-up and the LR
    finder come first), else linear between the budgets around it; None when it never does."""
    prev_t, prev_a = None, None
    for _, t, acc, _ in curve:
        if acc >= target:
            if prev_t is None or acc <= prev_a:
                return t
            return prev_t + (t - prev_t) * (target - prev_a) / (acc - prev_a)
        prev_t, prev_a = t, acc
    return None


def goal_lines(runs: list[dict]) -> list[str]:
    """The goal line of each skinflow side (``skinflow``, ``skinflow-rerun``) at each fastai budget."""
    fa, lines = points(runs, "fastai"), []
    for side in [s for s in dict.fromkeys(r["side"] for r in runs) if s in ("skinflow", "skinflow-rerun")]:
        sk = points(runs, side)
        for epochs, t_fa, acc_fa, _ in fa:
            reach = time_to_reach(sk, acc_fa)
            if reach is None:
                best = max(sk, key=lambda p: p[2]) if sk else None
                got = f"best {best[2]:.3f} at {best[0]} epochs, {best[1]:.0f} s" if best else "no run"
                lines.append(
                    f"- fastai {epochs} epochs: {acc_fa:.3f} in {t_fa:.0f} s. {side} did not reach it ({got})."
                )
            else:
                ratio = reach / t_fa
                verdict = "**met**" if ratio <= GOAL else "**not met**"
                lines.append(
                    f"- fastai {epochs} epochs: {acc_fa:.3f} in {t_fa:.0f} s. {side} reached it in {reach:.0f} s: "
                    f"{ratio:.2f}x fastai's time; goal (<= {GOAL}x) {verdict}."
                )
    return lines


def plot(runs: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for side in dict.fromkeys(r["side"] for r in runs):
        for r in (r for r in runs if r["side"] == side):
            ax.scatter(r["wall_seconds"], r["test_balanced_accuracy"], s=12, alpha=0.4)
        curve = points(runs, side)
        ax.plot([p[1] for p in curve], [p[2] for p in curve], marker="o", label=side)
        for epochs, t, acc, _ in curve:
            ax.annotate(f"{epochs} ep", (t, acc), textcoords="offset points", xytext=(4, -10), fontsize=8)
    ax.set_xlabel("wall seconds (start-up, LR finder, training, test)")
    ax.set_ylabel("test balanced accuracy (118 shipped images)")
    ax.set_title("isic9, ImageNet EfficientNet-Lite0 at 128 px")
    ax.grid(alpha=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def render(result: dict[str, Any]) -> str:
    m = result["machine"]
    rows = []
    for side in dict.fromkeys(r["side"] for r in result["runs"]):
        for epochs, t, acc, f1 in points(result["runs"], side):
            group = [r for r in result["runs"] if r["side"] == side and r["epochs"] == epochs]
            tests = sorted({r.get("range_test", "") for r in group})
            rows.append(
                [side, str(epochs), str(len(group)), f"{t:.0f}", f"{acc:.3f}", f"{f1:.3f}", group[0]["precision"]]
                + ["/".join(tests) or "lr_find"]
            )
    return "\n".join(
        [
            "## Rapid on real data: skinflow vs fastai, time to accuracy (`make bench-rapid`)",
            "",
            f"Command: `{result['command']}`",
            "",
            f"Machine: {m['cpu_model']}, {m['usable_cores']} cores, torch {m['torch']}; load average "
            f"{result['load_at_start']} at start, {result['load_at_end']} at end; {m['date']}, commit "
            f"{m['git_commit'][:10]}; total {result['wall_seconds']:.0f} s. The machine ran nothing else.",
            "",
            "isic9, all of its training folder (5/6 trained on, 1/6 for selection, the same images on both "
            f"sides), ImageNet EfficientNet-Lite0 at {SIZE} px, tested on the 118 shipped test images. Wall = "
            "the whole process as a user runs it. skinflow's recipe: the project file `skinflow init` "
            f"writes for photographs ({result['recipe']}); its precision here: {result.get('precision', '?')}.",
            "",
            md_table(
                ["side", "epochs", "runs", "wall s", "test bal. acc", "test macro-F1", "precision", "range test"], rows
            ),
            "",
            "![balanced accuracy against wall seconds](rapid_curve.png)",
            "",
            "Goal (skinflow reaches fastai's balanced accuracy in at most 0.5x fastai's wall time):",
            "",
            *goal_lines(result["runs"]),
        ]
    )


# --- main -----------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", default="3,5,10", help="epoch budgets (comma-separated)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument(
        "--sides",
        default="fastai,skinflow,skinflow-rerun",
        help="fastai, skinflow (measures its range test), skinflow-rerun (after skinflow: reuses it)",
    )
    ap.add_argument("--fp32-budgets", default="5", help="budgets of the precision-matched skinflow row ('' = none)")
    ap.add_argument("--work-dir", type=Path, default=REPO / "bench" / "out" / "rapid")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "RESULTS.md")
    ap.add_argument("--one", choices=["fastai"], help=argparse.SUPPRESS)
    ap.add_argument("--epochs", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(one_fastai(args.epochs, int(args.seeds), args.work_dir), default=str))
        return None
    if not ISIC9.is_dir():
        raise SystemExit(f"bench-rapid needs the real images at {ISIC9} (see its NOTICE.md)")
    budgets = [int(b) for b in args.budgets.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    fp32 = [int(b) for b in args.fp32_budgets.split(",") if b]
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PREFECT_HOME": str(work / "prefect"), "SKINFLOW_PROJECT_FILE": str(work / "skinflow.yaml")}
    subprocess.run(
        [SKINFLOW, "init", "--data", str(ISIC9), "--out", str(work / "skinflow.yaml"), "--force"], env=env, check=True
    )
    subprocess.run(
        [SKINFLOW, "data", "manifest", str(ISIC9)],
        cwd=work,
        env={**env, "SKINFLOW_DATA_ROOT": str(work / "warm")},
        check=True,
        capture_output=True,
    )  # Prefect's database, once
    from ml.project import load_project
    from ml.train.config import TrainConfig
    from ml.train.precision import precision_for

    project = load_project(work / "skinflow.yaml")
    recipe = {
        **project.section("training"),
        "size": SIZE,
        **{f"lr_find.{k}": v for k, v in project.section("lr_find").items()},
    }
    precision = precision_for(TrainConfig(**project.section("training")))
    if precision.dtype is None and fp32:  # the recipe trains in fp32 here: its own rows are precision-matched
        _log(f"no separate fp32 row: the recipe trains in fp32 on this machine ({precision.reason})")
        fp32 = []
    machine = machine_description({"threads": None})
    started, load_start, runs = time.perf_counter(), load_average(), []
    sides = args.sides.split(",")
    for seed in seeds:
        for epochs in budgets:
            plan = [(s, ()) for s in sides] + (
                [("skinflow", ("--no-amp",))] if epochs in fp32 and "skinflow" in sides else []
            )
            plan = plan[seed % len(plan) :] + plan[: seed % len(plan)]
            plan.sort(key=lambda step: step[0] == "skinflow-rerun")  # after the run whose test it reuses
            for side, extra in plan:
                run = run_side(
                    side, epochs, seed, work / f"{side}{'-fp32' if extra else ''}-e{epochs}-s{seed}", env, extra
                )
                runs.append(run)
                _log(
                    f"{run['side']} {epochs} epochs seed {seed}: {run['test_balanced_accuracy']:.3f} in {run['wall_seconds']:.0f} s"
                )
    result = {
        "command": "python -m bench.bench_rapid " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine,
        "load_at_start": load_start,
        "load_at_end": load_average(),
        "wall_seconds": time.perf_counter() - started,
        "recipe": ", ".join(f"{k} {v}" for k, v in recipe.items()),
        "precision": f"{precision.name}: {precision.reason}",
        "runs": runs,
    }
    write_json(result, REPO / "bench" / "out" / "bench_rapid.json")
    plot(runs, REPO / "bench" / "rapid_curve.png")  # tracked: RESULTS.md shows it
    args.out.write_text(replace_section(args.out.read_text(), SECTION, render(result)))
    print(render(result))
    return result


if __name__ == "__main__":
    main()
