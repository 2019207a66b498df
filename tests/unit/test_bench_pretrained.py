"""The pretrained and fastai benchmarks' bookkeeping: subsets, per-seed speedups, summaries, the
goal check, and the overhead bench's profile following the demo's."""

from __future__ import annotations

import numpy as np
import pytest

from bench import bench_fastai
from bench import bench_pretrained as bp


def test_first_per_class_caps_each_class_in_order():
    labels = np.array([2, 0, 0, 1, 0, 2, 1, 0])
    idx = bp.first_per_class(labels, 2)
    assert idx.tolist() == [0, 1, 2, 3, 5, 6]
    assert bp.first_per_class(labels, None).tolist() == list(range(8))


def _run(variant, precision, seed, vals, secs, test=0.5, arch="efficientnet_lite0"):
    return {
        "arch": arch,
        "variant": variant,
        "precision": precision,
        "seed": seed,
        "lr": 0.01,
        "amp_dtype": None if precision == "fp32" else "bfloat16",
        "test_models": 1,
        "history": [
            {"epoch": i + 1, "val_balanced_accuracy": v, "epoch_seconds": s} for i, (v, s) in enumerate(zip(vals, secs))
        ],
        "best_val_balanced_accuracy": max(vals),
        "wall_seconds": sum(secs),
        "test_balanced_accuracy": test,
        "test_macro_f1": test,
    }


def test_speedups_are_per_seed_against_that_seeds_sgd_fp32():
    runs = [
        _run("sgd", "fp32", 0, [0.3, 0.5, 0.6], [10, 10, 10]),
        _run("sgdr", "fp32", 0, [0.6, 0.4, 0.7], [10, 10, 10]),  # reaches 0.6 after 10 s: eta 30/10
        _run("sgd", "fp32", 1, [0.2, 0.4, 0.5], [10, 10, 10]),
        _run("sgdr", "fp32", 1, [0.3, 0.3, 0.45], [10, 10, 10]),
    ]  # never reaches seed 1's 0.5
    bp.add_speedups(runs)
    assert runs[0]["eta"] == pytest.approx(1.0)
    assert runs[1]["eta"] == pytest.approx(3.0)
    assert runs[3]["eta"] is None and runs[3]["time_to_target"] is None
    rows = {r["variant"]: r for r in bp.summarise(runs)}
    assert rows["sgdr"]["eta_reached"] == "1/2"
    assert rows["sgdr"]["eta"][0] == pytest.approx(3.0)
    assert rows["sgd"]["best_val_balanced_accuracy"][0] == pytest.approx(0.55)


def test_best_variant_is_the_highest_mean_test_score_of_the_main_arch():
    runs = [_run("sgd", "fp32", s, [0.5], [1], test=0.40) for s in (0, 1)]
    runs += [_run("adam", "fp32", s, [0.5], [1], test=t) for s, t in ((0, 0.60), (1, 0.30))]  # mean 0.45
    runs += [_run("sgdr", "amp", s, [0.5], [1], test=0.44) for s in (0, 1)]
    runs += [_run("sgd", "fp32", 0, [0.5], [1], test=0.99, arch="efficientnet_lite2")]
    assert bp.best_variant(bp.summarise(runs), "efficientnet_lite0") == "adam"


def test_fastai_goal_needs_both_accuracy_and_time():
    def side(name, accs, secs):
        return {"side": name, "test_balanced_accuracy": accs, "wall_seconds": secs}

    fa = side("fastai (fit_one_cycle, fp32)", [0.50, 0.52], [100, 100])
    lines = bench_fastai.goal_rows(
        [
            fa,
            side("skinflow (a, bfloat16)", [0.52, 0.52], [79, 80]),
            side("skinflow (a, fp32)", [0.55, 0.55], [90, 90]),
            side("skinflow (b, fp32)", [0.40, 0.40], [50, 50]),
        ]
    )
    assert ["**met**" in line for line in lines] == [True, False, False]


def test_overhead_bench_measures_the_demo_profile():
    from bench.bench_overhead import PROFILE
    from flows.demo import PROFILES

    cpu = PROFILES["cpu"]
    assert (PROFILE["size"], PROFILE["epochs"], PROFILE["batch_size"]) == (
        cpu["data"]["size"],
        cpu["training"]["epochs"],
        cpu["training"]["batch_size"],
    )
    assert (PROFILE["per_class"], PROFILE["synth_size"]) == (cpu["synth"]["per_class"], cpu["synth"]["size"])
