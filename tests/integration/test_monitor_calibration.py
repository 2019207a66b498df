"""Calibration of the drift decision (ml/monitor) on synthetic batches from ml/data/synth.py.

Images are 24 px: descriptors and embeddings of ~2,000 images then cost ~20 s. Embeddings and
predictions come from a real ResNet-18 module at random initialisation (seed 0): its
penultimate layer is a fixed random feature map of the image, which is what the embedding
tests need; its predictions carry no class information, so label shift is detected here
through the true labels the batches carry (BBSE itself is held to its numbers in
tests/unit/test_monitor_label_shift.py with a simulated classifier)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from ml.data.synth import LABELS, SynthConfig, generate
from ml.monitor.describe import describe
from ml.monitor.drift import measure_drift
from ml.monitor.model import MonitoredModel
from ml.monitor.policy import DriftPolicy
from ml.train.models import build_model

pytestmark = pytest.mark.slow
SIZE, PER_CLASS = 24, 6  # batches of 60 images against a 200-image reference
SHIFTS = {  # the strengths tested, as SynthConfig knobs (the reference: defaults)
    "skin_tone": dict(skin_tones=[0, 0, 0, 1, 1, 1]),  # only the three darkest tone bins
    "illumination": dict(gamma=(1.5, 1.5)),  # gamma 1.5: every photo darker
    "blur": dict(blur=0.8),  # Gaussian blur, sigma 0.8 px
    "noise": dict(noise=0.03),  # 3% impulse-noise pixels
}
LABEL_SHIFT = {label: (0.4 if label == "acne" else 0.6 / 9) for label in LABELS}  # acne 0.1 -> 0.4, looks unchanged


def _records(root: Path) -> pd.DataFrame:
    rows = [
        {"path": str(p), "local_path": str(p), "label": label}
        for label in LABELS
        for p in sorted((root / label).glob("*.jpg"))
    ]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibration")
    torch.manual_seed(0)
    module = build_model("resnet18", len(LABELS))
    model = MonitoredModel("resnet18", list(LABELS), SIZE, ((0.5,) * 3, (0.25,) * 3), [module.state_dict()])

    def batch(name: str, **knobs) -> object:
        generate(root / name, SynthConfig(size=SIZE, **knobs), progress=False)
        return describe(_records(root / name), model)

    return {"reference": batch("reference", per_class=20, seed=0), "batch": batch, "policy": DriftPolicy.load()}


def test_batches_from_the_reference_distribution_raise_no_alert_in_19_of_20_seeds(world):
    verdicts = []
    for seed in range(1, 21):
        cur = world["batch"](f"null{seed}", per_class=PER_CLASS, seed=100 + seed)
        summary, snapshot = measure_drift(world["reference"], cur, world["policy"], render=False)
        assert snapshot is None
        verdicts.append((seed, summary["verdict"], summary["reasons"]))
    alarms = [v for v in verdicts if v[1] == "drift"]
    assert len(alarms) <= 1, alarms


@pytest.mark.parametrize("shift", sorted(SHIFTS))
def test_covariate_shift_is_detected(world, shift):
    cur = world["batch"](shift, per_class=PER_CLASS, seed=900, **SHIFTS[shift])
    summary, _ = measure_drift(world["reference"], cur, world["policy"], render=False)
    assert summary["verdict"] == "drift", summary["reasons"]
    assert summary["covariate"]["drifted"]
    expected = {"skin_tone": "brightness", "illumination": "brightness", "blur": "sharpness", "noise": "sharpness"}
    assert expected[shift] in summary["covariate"]["holm_significant"]


def test_pure_label_shift_is_detected_on_the_labels(world):
    cur = world["batch"]("label_shift", per_class=None, total=10 * PER_CLASS, class_priors=LABEL_SHIFT, seed=900)
    summary, _ = measure_drift(world["reference"], cur, world["policy"], render=False)
    assert summary["verdict"] == "drift"
    labels = summary["label_shift"]["true_labels"]
    assert labels["drifted"] and labels["batch"]["acne"] > 0.3 and labels["reference"]["acne"] == pytest.approx(0.1)
