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
VERBS = [
    ["data", "synth"],
    ["data", "manifest"],
    ["data", "split"],
    ["data", "apply-decisions"],
    ["validate"],
    ["label-issues"],
    ["lr-find"],
    ["train"],
    ["pretrain"],
    ["tune"],
    ["retrain"],
    ["curation-ab"],
    ["robustness"],
    ["interpret"],
    ["demo"],
    ["drift"],
    ["stack", "up"],
    ["stack", "down"],
    ["stack", "status"],
]


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
    split = pd.read_csv(tmp_path / "s.csv")
    splits = split["split"].value_counts().to_dict()
    # stable hash buckets: the shares are those asked for up to sampling noise (60 images), and
    # every class has an image in every split
    assert sum(splits.values()) == 60 and set(splits) == {"train", "val", "test"}
    assert abs(splits["test"] - 10) <= 6 and abs(splits["val"] - 10) <= 6
    assert (split.groupby("label")["split"].nunique() == 3).all()
    out = runner.invoke(
        app, ["data", "split", str(ds), "--out", str(tmp_path / "x.csv"), "--test-frac", "0.6", "--val-frac", "0.5"]
    )
    assert out.exit_code == 2 and "error" in out.output


def _skinflow(args, env, timeout=300):
    """Run the installed CLI in a subprocess (as a user does), against the session's Prefect server."""
    return subprocess.run([str(VENV_BIN / "skinflow"), *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_validate_exits_nonzero_on_critical_failures(prefect_harness, tmp_path):
    from prefect.settings import PREFECT_API_URL

    env = {
        **os.environ,
        "SKINFLOW_DATA_ROOT": str(tmp_path / "data"),
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
    }
    ds = tmp_path / "ds"
    assert (
        runner.invoke(
            app, ["data", "synth", "--out", str(ds), "--per-class", "6", "--size", "64", "--corrupt", "2"]
        ).exit_code
        == 0
    )
    out = _skinflow(["validate", str(ds), "--out", str(tmp_path / "val")], env)
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]
    assert "FAIL" in out.stdout and "integrity" in out.stdout
    # the failing check names the files it counted, with their reasons
    meta = pd.read_csv(ds / "synth_meta.csv")
    broken = meta[meta["kind"].str.startswith("corrupt")]["path"].tolist()
    assert len(broken) == 2
    for rel in broken:
        named = [line for line in out.stdout.splitlines() if rel in line]
        assert named and any(r in named[0] for r in ("zero_bytes", "truncated")), (rel, out.stdout[-1500:])
    clean = tmp_path / "clean"
    assert (
        runner.invoke(app, ["data", "synth", "--out", str(clean), "--per-class", "10", "--size", "64"]).exit_code == 0
    )
    out = _skinflow(["validate", str(clean), "--out", str(tmp_path / "val2")], env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "FAIL" not in out.stdout and "data docs" in out.stdout
    assert any((tmp_path / "val2").rglob("index.html")), "the GX Data Docs site was written"


def test_train_and_lr_find_verbs(prefect_harness, tmp_path):
    """`skinflow train ... --amp` trains, evaluates and writes plots and metrics;
    `skinflow lr-find` prints the suggestion and the bracket."""
    from prefect.settings import PREFECT_API_URL

    env = {
        **os.environ,
        "SKINFLOW_DATA_ROOT": str(tmp_path / "data"),
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
    }
    ds = tmp_path / "ds"
    assert runner.invoke(app, ["data", "synth", "--out", str(ds), "--per-class", "8", "--size", "32"]).exit_code == 0
    out = _skinflow(
        [
            "lr-find",
            "--data",
            str(ds),
            "--size",
            "32",
            "--batch-size",
            "16",
            "--num-iter",
            "15",
            "--out",
            str(tmp_path / "lr"),
        ],
        env,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout[out.stdout.index("{") :])
    lo, hi = res["bracket"]
    assert lo < hi and set(res["suggestions"]) == {"valley", "steepest", "min_div10"}
    # the chosen rate is the minimum-loss LR / 10 (min_div10), held to the bracket
    assert res["chosen"] == pytest.approx(min(max(res["suggestions"]["min_div10"], lo), hi))
    assert (tmp_path / "lr" / "lr_finder.png").stat().st_size > 0
    out = _skinflow(
        [
            "train",
            "--data",
            str(ds),
            "--model",
            "resnet18",
            "--schedule",
            "sgdr_dlr_clm",
            "--amp",
            "--epochs",
            "3",
            "--size",
            "32",
            "--batch-size",
            "16",
            "--out",
            str(tmp_path / "train"),
        ],
        env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout[out.stdout.index("{") :])
    # --amp is bf16 where this CPU has native bf16, fp32 (with one warning saying why) where not
    import torch
    from mlflow import MlflowClient

    from ml.train.precision import choose_precision

    chosen = choose_precision(torch.device("cpu"), True)
    assert summary["amp_dtype"] == chosen.dtype_name and summary["epochs_run"] == 3
    assert (chosen.reason in out.stderr) == (chosen.dtype is None), out.stderr[-2000:]
    tags = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(summary["run_id"]).data.tags
    assert (tags["amp"], tags["precision"], tags["precision_reason"]) == ("True", chosen.name, chosen.reason)
    written = {p.name for p in (tmp_path / "train").rglob("*.png")}
    assert {"lr_finder.png", "lr_schedule.png", "curves.png", "confusion_matrix.png", "roc.png"} <= written
    metrics = json.loads((tmp_path / "train" / "metrics.json").read_text())
    assert metrics["config"]["schedule"] == "sgdr_dlr_clm" and metrics["config"]["amp"] is True
    assert metrics["precision"] == chosen.name


@pytest.mark.slow
def test_interrupted_tune_resumes_from_its_checkpoints(prefect_harness, tmp_path):
    """Ctrl+C (SIGINT) in the middle of a trial, then the same `skinflow tune --name`: Tune restores
    the experiment and the trial continues from its last checkpoint instead of starting over."""
    import glob
    import signal
    import time

    import mlflow
    from mlflow import MlflowClient
    from prefect.settings import PREFECT_API_URL

    env = {
        **os.environ,
        "SKINFLOW_DATA_ROOT": str(tmp_path / "data"),
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
        "PYTHONUNBUFFERED": "1",
    }
    ds = tmp_path / "ds"
    assert runner.invoke(app, ["data", "synth", "--out", str(ds), "--per-class", "8", "--size", "32"]).exit_code == 0
    epochs = 20  # long enough that the Ctrl-C lands mid-trial (after its second checkpoint)
    args = [
        "tune",
        "--data",
        str(ds),
        "--schedules",
        "sgdr",
        "--amp",
        "off",
        "--epochs",
        str(epochs),
        "--size",
        "32",
        "--checkpoint-interval",
        "0",
        "--name",
        "t-int",
    ]
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen([str(VENV_BIN / "skinflow"), *args], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            pattern = str(tmp_path / "data" / "tune" / "t-int" / "*" / "checkpoint_*")
            deadline = time.monotonic() + 240
            # a second checkpoint on storage: the first is then recorded in the experiment state
            while not any(int(p.rsplit("_", 1)[1]) >= 1 for p in glob.glob(pattern)):
                assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "no trial checkpoint within 240 s"
                time.sleep(0.2)
            first.send_signal(signal.SIGINT)
            first.wait(timeout=180)
        finally:
            if first.poll() is None:
                first.kill()
    said = (tmp_path / "first.log").read_text()
    assert first.returncode == 130 and "was interrupted" in said and "`skinflow tune --name t-int`" in said, said[
        -3000:
    ]
    assert "every Ray Tune trial failed" not in said
    out = _skinflow(args, env, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    res = json.loads(out.stdout[out.stdout.index("{") :])
    assert res["best"]["epochs"] == epochs and not res["failed"]

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    try:
        client = MlflowClient()
        exp = client.get_experiment_by_name("skinflow-tune")
        trial_runs = [r for r in client.search_runs([exp.experiment_id]) if "trial" in r.data.tags]
        steps = [
            sorted(m.step for m in client.get_metric_history(r.info.run_id, "val_balanced_accuracy"))
            for r in trial_runs
        ]
        tags = [r.data.tags for r in trial_runs]
    finally:
        mlflow.set_tracking_uri(previous)
    # the restored trial continues its own MLflow child run (no duplicate, none left RUNNING)
    assert len(steps) == 1, f"one MLflow run per trial, continued on restore: {steps}"
    assert set(steps[0]) == set(range(1, epochs + 1)), steps
    restored = int(tags[0].get("restored_from_epoch", "0"))
    assert int(tags[0].get("trial_attempts", "1")) >= 2, tags[0]
    assert 1 <= restored < epochs, f"resumed from a mid-trial checkpoint, not from scratch: {tags[0]}"
    # epochs after the checkpoint the first run had already logged are logged again; none before it
    assert all(steps[0].count(e) == 1 for e in range(1, restored + 1)), steps
