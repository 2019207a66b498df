"""bench/bench_train.py: the speedup arithmetic (pure; the --quick run end to end is in
tests/integration/test_bench_train_quick.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bench.bench_train import eta, speedups, time_to_target
from bench.common import variant_lr

REPO = Path(__file__).resolve().parents[2]


def _hist(accs: list[float], secs: list[float]) -> list[dict[str, float]]:
    return [
        {"epoch": i + 1, "val_balanced_accuracy": a, "epoch_seconds": s}
        for i, (a, s) in enumerate(zip(accs, secs, strict=True))
    ]


def test_time_to_target_first_epoch_at_or_above_with_cumulative_seconds() -> None:
    h = _hist([0.2, 0.5, 0.4, 0.7], [10.0, 12.0, 11.0, 9.0])
    assert time_to_target(h, 0.5) == {"epoch": 2, "seconds": 22.0}
    assert time_to_target(h, 0.45) == {"epoch": 2, "seconds": 22.0}
    assert time_to_target(h, 0.7) == {"epoch": 4, "seconds": 42.0}
    assert time_to_target(h, 0.1) == {"epoch": 1, "seconds": 10.0}


def test_time_to_target_never_reached_and_nan_epochs() -> None:
    assert time_to_target(_hist([0.2, 0.3], [5.0, 5.0]), 0.31) is None
    assert time_to_target(_hist([math.nan, 0.4], [5.0, 6.0]), 0.3) == {"epoch": 2, "seconds": 11.0}
    assert time_to_target([], 0.1) is None


def test_eta_ratio_and_missing() -> None:
    assert eta(30.0, 10.0) == pytest.approx(3.0)
    assert eta(30.0, None) is None
    assert eta(None, 10.0) is None


def test_speedups_target_is_baseline_best_and_eta_per_run() -> None:
    histories = {
        ("sgd", "fp32"): _hist([0.3, 0.5, 0.6], [10.0, 10.0, 10.0]),  # best 0.6 at 30 s
        ("sgdr_dlr_clm", "fp32"): _hist([0.6, 0.7, 0.8], [12.0, 12.0, 12.0]),  # 0.6 at 12 s
        ("sgdr_dlr_clm", "amp"): _hist([0.4, 0.65, 0.7], [5.0, 5.0, 5.0]),  # 0.65 at 10 s
        ("adam", "fp32"): _hist([0.2, 0.3, 0.59], [8.0, 8.0, 8.0]),  # never
    }
    s = speedups(histories)
    assert s["target"] == pytest.approx(0.6)
    assert s["baseline_seconds"] == pytest.approx(30.0)
    runs = s["runs"]
    assert runs[("sgd", "fp32")]["eta"] == pytest.approx(1.0)
    assert runs[("sgdr_dlr_clm", "fp32")]["time_to_target"] == {"epoch": 1, "seconds": 12.0}
    assert runs[("sgdr_dlr_clm", "fp32")]["eta"] == pytest.approx(2.5)
    assert runs[("sgdr_dlr_clm", "amp")]["eta"] == pytest.approx(3.0)
    assert runs[("adam", "fp32")]["time_to_target"] is None
    assert runs[("adam", "fp32")]["eta"] is None


def test_learning_rates_per_variant_come_from_their_family_s_range_test() -> None:
    finders = {"sgd": {"chosen": 0.3}, "sgd_dlr": {"chosen": 0.2}, "adam": {"chosen": 4e-4}}
    assert variant_lr("sgd", finders) == 0.01  # the thesis baseline
    assert variant_lr("sgdr", finders) == 0.3
    assert variant_lr("sgdr_dlr_clm", finders) == 0.2
    assert variant_lr("adam", finders) == pytest.approx(4e-4)  # Adam's own range test, no chosen/10 rule


def _result(amp_dtype: str | None) -> dict:
    runs = [
        {"variant": "sgd", "precision": p, "amp_dtype": d, "eta": e, "test_macro_f1": 0.5, "wall_seconds": s}
        for p, d, e, s in (("fp32", None, 1.0, 30.0), ("amp", amp_dtype, 1.5, 20.0))
    ]
    return {
        "datasets": [{"dataset": "synth", "target": 0.6, "runs": runs, "info": {"counts": {"train": 40}}}],
        "machine": {
            "cpu_capability": "AVX2",
            "usable_cores": 2,
            "load_average_at_start": None,
            "amp_precision": "amp requested but this CPU (AVX2) has no native bf16: training in fp32",
        },
        "profile": {"quick": False},
    }


def test_interpretation_names_the_amp_dtype_or_says_the_amp_rows_ran_fp32() -> None:
    from bench.bench_train import interpretation

    (line,) = interpretation(_result("bfloat16"))
    assert "AMP (bfloat16) made the whole 40-image fits 1.50x faster" in line
    assert "on this CPU (AVX2); the factor is machine-dependent" in line
    (line,) = interpretation(_result(None))
    assert "AMP rows trained in fp32 (amp requested but this CPU (AVX2) has no native bf16" in line
    assert "faster" not in line
