"""The skinflow CLI: every verb answers --help; the data verbs and validate work end to end."""

from __future__ import annotations

import json
import os
import subprocess

import pandas as pd
import pytest
from typer.testing import CliRunner

from flows.cli import app
from tests.conftest import VENV_BIN

runner = CliRunner()
VERBS = [["data", "synth"], ["data", "manifest"], ["data", "split"], ["validate"], ["lr-find"], ["train"],
         ["pretrain"], ["tune"], ["retrain"], ["curation-ab"], ["demo"], ["stack", "up"], ["stack", "down"],
         ["stack", "status"]]


def test_top_level_help_lists_every_verb():
    out = runner.invoke(app, ["--help"])
    assert out.exit_code == 0
    for verb in {v[0] for v in VERBS}:
        assert verb in out.output


@pytest.mark.parametrize("verb", VERBS, ids=lambda v: " ".join(v))
def test_every_verb_has_help_with_defaults(verb):
    out = runner.invoke(app, [*verb, "--help"])
    assert out.exit_code == 0, out.output
    assert "Usage" in out.output


def test_data_verbs_end_to_end(tmp_path):
    ds = tmp_path / "ds"
    out = runner.invoke(app, ["data", "synth", "--out", str(ds), "--per-class", "6", "--size", "32", "--corrupt", "2"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["images"] == 60
    out = runner.invoke(app, ["data", "manifest", str(ds), "--out", str(tmp_path / "m.csv")])
    assert out.exit_code == 0, out.output
    summary = json.loads(out.stdout[: out.stdout.rindex("}") + 1])
    assert summary["bad"] == {"zero_bytes": 1, "truncated": 1}
    assert len(pd.read_csv(tmp_path / "m.csv")) == 60
    out = runner.invoke(app, ["data", "split", str(ds), "--out", str(tmp_path / "s.csv"), "--test-frac", "0.2"])
    assert out.exit_code == 0, out.output
    splits = pd.read_csv(tmp_path / "s.csv")["split"].value_counts().to_dict()
    assert splits == {"train": 40, "val": 10, "test": 10}
    out = runner.invoke(app, ["data", "split", str(ds), "--out", str(tmp_path / "x.csv"), "--test-frac", "0.6",
                              "--val-frac", "0.5"])
    assert out.exit_code == 2 and "error" in out.output


def _skinflow(args, env, timeout=300):
    """Run the installed CLI in a subprocess (as a user does), against the session's Prefect server."""
    return subprocess.run([str(VENV_BIN / "skinflow"), *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_validate_exits_nonzero_on_critical_failures(prefect_harness, tmp_path):
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "SKINFLOW_DATA_ROOT": str(tmp_path / "data"), "PREFECT_API_URL": PREFECT_API_URL.value(),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    ds = tmp_path / "ds"
    assert runner.invoke(app, ["data", "synth", "--out", str(ds), "--per-class", "6", "--size", "64",
                               "--corrupt", "2"]).exit_code == 0
    out = _skinflow(["validate", str(ds), "--out", str(tmp_path / "val")], env)
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]
    assert "FAIL" in out.stdout and "integrity" in out.stdout
    clean = tmp_path / "clean"
    assert runner.invoke(app, ["data", "synth", "--out", str(clean), "--per-class", "10", "--size", "64"]).exit_code == 0
    out = _skinflow(["validate", str(clean), "--out", str(tmp_path / "val2")], env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "FAIL" not in out.stdout and "data docs" in out.stdout
    assert (tmp_path / "val2").rglob("index.html")


def test_train_and_lr_find_verbs(prefect_harness, tmp_path):
    """`skinflow train ... --amp` trains, evaluates and writes plots and metrics;
    `skinflow lr-find` prints the suggestion and the bracket."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "SKINFLOW_DATA_ROOT": str(tmp_path / "data"), "PREFECT_API_URL": PREFECT_API_URL.value(),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    ds = tmp_path / "ds"
    assert runner.invoke(app, ["data", "synth", "--out", str(ds), "--per-class", "8", "--size", "32"]).exit_code == 0
    out = _skinflow(["lr-find", "--data", str(ds), "--size", "32", "--batch-size", "16", "--num-iter", "15",
                     "--out", str(tmp_path / "lr")], env)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout[out.stdout.index("{"):])
    lo, hi = res["bracket"]
    assert lo <= res["chosen"] <= hi and set(res["suggestions"]) == {"valley", "steepest", "min_div10"}
    assert (tmp_path / "lr" / "lr_finder.png").stat().st_size > 0
    out = _skinflow(["train", "--data", str(ds), "--model", "resnet18", "--schedule", "sgdr_dlr_clm", "--amp",
                     "--epochs", "3", "--size", "32", "--batch-size", "16", "--out", str(tmp_path / "train")], env)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout[out.stdout.index("{"):])
    assert summary["amp_dtype"] == "bfloat16" and summary["epochs_run"] == 3
    written = {p.name for p in (tmp_path / "train").rglob("*.png")}
    assert {"lr_finder.png", "lr_schedule.png", "curves.png", "confusion_matrix.png", "roc.png"} <= written
    metrics = json.loads((tmp_path / "train" / "metrics.json").read_text())
    assert metrics["config"]["schedule"] == "sgdr_dlr_clm" and metrics["config"]["amp"] is True
