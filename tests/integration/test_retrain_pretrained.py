"""`skinflow retrain` takes the backbone and its weights: on real photographs (an isic9 subset,
listed in a CSV, never copied) `--model efficientnet_lite0 --weights imagenet` registers a lite0
whose weights start from ImageNet's, not from random init."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

from tests.conftest import ISIC9, VENV_BIN

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not ISIC9.is_dir(), reason=f"real-data test: {ISIC9} is absent")]
CLASSES = ("melanoma", "nevus", "vascular_lesion")


def _subset_csv(tmp_path: Path) -> Path:
    rows = ["path,label,split"]
    for label in CLASSES:
        files = sorted((ISIC9 / "train" / label).glob("*.jpg"))
        rows += [f"{p},{label},{'test' if i < 4 else 'train'}" for i, p in enumerate(files[:16])]
    csv = tmp_path / "subset.csv"
    csv.write_text("\n".join(rows) + "\n")
    return csv


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten().float(), b.flatten().float(), dim=0))


def test_retrain_with_imagenet_weights_registers_an_imagenet_initialised_lite0(tmp_path):
    import mlflow

    from ml.tracking.models import load_model_states
    from ml.train.models import build_model

    project = tmp_path / "skinflow.yaml"
    project.write_text("data: {allow_outside_root: true}  # the CSV lists the shared images where they are\n")
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "SKINFLOW_"))}
    env = {
        **keep,
        "HOME": str(tmp_path / "home"),
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "MLFLOW_TRACKING_URI": tracking,
        "SKINFLOW_DATA_ROOT": str(tmp_path / "data"),
        "SKINFLOW_PROJECT_FILE": str(project),
    }
    cmd = [str(VENV_BIN / "skinflow"), "retrain", "--data", str(_subset_csv(tmp_path))]
    cmd += ["--model", "efficientnet_lite0", "--weights", "imagenet", "--no-tune", "--no-validate"]
    cmd += ["--epochs", "1", "--lr", "0.0005", "--size", "32", "--batch-size", "16", "--out", str(tmp_path / "out")]
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    client = mlflow.MlflowClient(tracking_uri=tracking)
    (version,) = client.search_model_versions("name = 'skin-lesion-classifier'")
    params = client.get_run(version.run_id).data.params
    assert (params["arch"], params["weights"]) == ("efficientnet_lite0", "imagenet")
    mlflow.set_tracking_uri(tracking)
    states, meta = load_model_states(f"models:/skin-lesion-classifier/{version.version}")
    assert meta["arch"] == "efficientnet_lite0" and len(meta["classes"]) == len(CLASSES)
    trained = states[0]
    imagenet = build_model("efficientnet_lite0", len(CLASSES), weights="imagenet").state_dict()
    torch.manual_seed(0)
    random_init = build_model("efficientnet_lite0", len(CLASSES)).state_dict()
    body = [k for k, v in imagenet.items() if v.dtype.is_floating_point and v.ndim == 4]  # the body's convolutions
    assert len(body) > 20
    near = [_cosine(trained[k], imagenet[k]) for k in body]
    far = [_cosine(trained[k], random_init[k]) for k in body]
    assert min(near) > 0.95, "one epoch at lr 5e-4 leaves every ImageNet convolution nearly as it was"
    assert max(far) < 0.5, "and nothing like a random initialisation"
