"""bench_loop's stage times come from the Prefect log: a task's time is the gap to the line before."""

from __future__ import annotations

from datetime import datetime

from bench.bench_loop import render, stage_times

LOG = """\
08:00:05.000 | INFO    | Task run 'build-manifest-1a2' - Finished in state Completed()
08:00:06.500 | INFO    | Task run 'split-dataset-0f3' - Finished in state Completed()
some other line
08:01:06.500 | INFO    | Task run 'compute-features-abc' - Finished in state Completed()
08:03:00.000 | INFO    | Task run 'lr-range-test-d00' - Finished in state Completed()
08:05:00.000 | INFO    | Task run 'lr-range-test-d01' - Finished in state Completed()
08:05:01.000 | WARNING | Task run 'mystery-task-777' - Finished in state Completed()
"""


def test_stage_times_sum_the_gaps_between_finished_tasks():
    stages = stage_times(LOG, datetime(2026, 12, 7, 8, 0, 0))
    assert stages == {"manifest": 6.5, "validate": 60.0, "LR range tests": 233.5, "other": 1.0}


def test_the_section_names_every_stage_and_the_gate():
    run = {
        "retrain": 1,
        "wall_seconds": 700.0,
        "stages": {"validate": 60.0, "final fit": 300.0},
        "summary": {
            "model_version": "1",
            "promoted": True,
            "gate_reason": "first version: ok",
            "schedule": "one_cycle",
        },
        "calibration": {"ece_before": 0.12, "ece_after": 0.04},
    }
    text = render(
        {
            "runs": [run],
            "machine": {"cpu_model": "Xeon", "usable_cores": 2},
            "date": "d",
            "commit": "c",
            "load": "quiet",
        }
    )
    assert "| final fit | 300 |" in text and "**700**" in text and "promoted: first version: ok" in text
    assert "0.120 -> 0.040" in text


def test_the_trust_figures_are_read_from_the_champion_or_the_last_version():
    from bench.bench_loop import _version

    runs = [
        {"summary": {"model_version": "1", "promoted": True}},
        {"summary": {"model_version": "2", "promoted": False}},
    ]
    assert _version(runs) == "1"
    assert _version([{"summary": {"model_version": "3", "promoted": False}}]) == "3"
    trust = {
        "version": "1",
        "images": 100,
        "coverage": 0.9,
        "mean_set_size": 2.5,
        "referral_rate": 0.7,
        "accuracy_all": 0.58,
        "accuracy_not_referred": 0.9,
        "not_referred": 30,
        "per_class": {"nevus": {"n": 16, "coverage": 0.94, "mean_set_size": 1.8}},
    }
    run = {"retrain": 1, "wall_seconds": 1.0, "stages": {}, "summary": {"model_version": "1"}, "calibration": None}
    text = render({"runs": [run], "trust": trust, "machine": {}, "date": "d", "commit": "c", "load": "quiet"})
    assert "referral rate 0.70" in text and "| nevus | 16 | 0.94 | 1.8 |" in text
