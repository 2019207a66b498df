"""Fault: the training process is SIGKILLed mid-epoch. `skinflow train --checkpoint-dir D` is killed
(its whole process group) right after a checkpoint, while the next epoch runs; the same command run
again resumes from the last checkpoint and ends bit-identical to an uninterrupted run (final state
dict, per-epoch history, evaluation metrics). The killed run's MLflow run is not left RUNNING: the
rerun marks it KILLED, tagged ``superseded_by``, and holds the whole history itself."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from tests.conftest import VENV_BIN

pytestmark = pytest.mark.slow

EPOCHS = 4
ARGS = [
    "train",
    "--model",
    "resnet18",
    "--schedule",
    "sgdr",
    "--lr",
    "0.01",
    "--epochs",
    str(EPOCHS),
    "--size",
    "32",
    "--batch-size",
    "16",
    "--seed",
    "0",
]


def _summary(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout[proc.stdout.index("{") :])


def _state_dict(run_id: str, dst: Path) -> dict[str, torch.Tensor]:
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="model/state_dict.pt", dst_path=str(dst))
    return torch.load(path, weights_only=True)


def test_a_killed_training_run_resumes_bit_identical(prefect_harness, synth_small, tmp_path) -> None:
    from prefect.settings import PREFECT_API_URL

    db = f"sqlite:///{tmp_path}/mlflow.db"
    env = {
        **os.environ,
        "SKINFLOW_DATA_ROOT": str(tmp_path / "data"),
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "MLFLOW_TRACKING_URI": db,
        "OMP_NUM_THREADS": "1",
    }
    cli = [str(VENV_BIN / "skinflow"), *ARGS, "--data", str(synth_small)]
    whole = _summary(
        subprocess.run([*cli, "--out", str(tmp_path / "whole")], env=env, capture_output=True, text=True, timeout=600)
    )

    ckpt = tmp_path / "ckpt"
    resumed_cmd = [*cli, "--out", str(tmp_path / "resumed"), "--checkpoint-dir", str(ckpt)]
    log = open(tmp_path / "killed.log", "wb")
    proc = subprocess.Popen(resumed_cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    digests: list[str] = []
    sidecar = ckpt / "last.pt.sha256"
    deadline = time.monotonic() + 400
    while len(digests) < 2 and proc.poll() is None and time.monotonic() < deadline:
        if sidecar.is_file() and (d := sidecar.read_text().strip()) and d not in digests:
            digests.append(d)
        time.sleep(0.02)
    assert proc.poll() is None, (
        "the run ended before its second checkpoint: " + (tmp_path / "killed.log").read_text()[-2000:]
    )
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI and everything it started
    proc.wait(30)
    from ml.train.checkpoint import load_verified

    killed_at = load_verified(ckpt / "last.pt")["epoch"]
    assert 2 <= killed_at < EPOCHS, killed_at
    killed_run = json.loads((ckpt / "mlflow_run.json").read_text())["run_id"]
    client = MlflowClient(db)
    assert client.get_run(killed_run).info.status == "RUNNING"  # what SIGKILL leaves behind

    resumed = _summary(subprocess.run(resumed_cmd, env=env, capture_output=True, text=True, timeout=600))
    assert resumed["epochs_run"] == whole["epochs_run"] == EPOCHS
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "auroc_macro"):
        assert resumed[key] == whole[key], key
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("whole", "resumed"))
    for report in (a, b):
        report.pop("wall_seconds"), report["config"].pop("checkpoint_dir")
    assert a == b, "the evaluation reports agree (per class, confusion matrix, loss, best epoch, config)"
    mlflow.set_tracking_uri(db)
    sd_whole, sd_resumed = _state_dict(whole["run_id"], tmp_path / "a"), _state_dict(resumed["run_id"], tmp_path / "b")
    assert sd_whole.keys() == sd_resumed.keys()
    assert all(torch.equal(sd_whole[k], sd_resumed[k]) for k in sd_whole), "final weights bit-identical"

    old, new = client.get_run(killed_run), client.get_run(resumed["run_id"])
    assert old.info.status == "KILLED" and old.data.tags["superseded_by"] == resumed["run_id"]
    assert new.info.status == "FINISHED" and new.data.tags["resumed_from_run"] == killed_run
    assert new.data.tags["restored_from_epoch"] == str(killed_at)  # resumed from the checkpoint, not from scratch
    assert "restored_from_epoch" not in client.get_run(whole["run_id"]).data.tags
    timing = {"epoch_seconds", "wall_seconds"}

    def measured(metrics) -> set[str]:  # what the model learned, not the clock or the machine (system/*)
        return {n for n in metrics if not n.startswith("system/")} - timing

    names = measured(client.get_run(whole["run_id"]).data.metrics)
    assert {"train_loss", "val_loss", "val_balanced_accuracy", "lr_group_0"} <= names
    assert measured(new.data.metrics) == names
    for name in names:  # every epoch's row, the restored ones included, equal to the uninterrupted run's
        got, want = (
            sorted((m.step, m.value) for m in client.get_metric_history(r, name))
            for r in (resumed["run_id"], whole["run_id"])
        )
        assert got == want, name
    experiment = client.get_experiment_by_name("skinflow-train").experiment_id
    assert not client.search_runs([experiment], "attributes.status = 'RUNNING'"), "no run left RUNNING"
