"""policies/drift.yaml loads, refuses what it does not know, and agrees with the retrain trigger."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ml.monitor.policy import DEFAULT_POLICY, DriftPolicy

REPO = Path(__file__).resolve().parents[2]


def test_shipped_policy_loads_and_every_key_is_commented():
    policy = DriftPolicy.load()
    assert 0 < policy.drifted_share <= 1 and policy.cooldown_s > 0
    lines = DEFAULT_POLICY.read_text().splitlines()
    for i, line in enumerate(lines):
        if line and not line.startswith("#"):
            assert lines[i - 1].startswith("#"), f"policy key without a comment above it: {line}"


def test_unknown_or_inconsistent_keys_are_refused(tmp_path):
    bad = tmp_path / "drift.yaml"
    bad.write_text("drifted_sahre: 0.3\n")
    with pytest.raises(ValueError, match="unknown drift policy key"):
        DriftPolicy.load(bad)
    shipped = DEFAULT_POLICY.read_text()  # every key (a policy file may omit none), two of them at odds
    bad.write_text(
        shipped.replace("tested_components: 6", "tested_components: 20").replace(
            "pca_components: 16", "pca_components: 8"
        )
    )
    with pytest.raises(ValueError, match="tested_components"):
        DriftPolicy.load(bad)


def test_retrain_trigger_cooldown_is_the_policy_cooldown():
    """The deployment trigger of retrain/on-demand fires on skinflow.drift.detected at most once
    per `within` seconds: the policy's cooldown."""
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    retrain = [
        d
        for d in spec["deployments"]
        if d["entrypoint"] == "flows/retrain.py:retrain_flow" and d["name"] == "on-demand"
    ]
    assert len(retrain) == 1
    triggers = retrain[0]["triggers"]
    drift = [t for t in triggers if "skinflow.drift.detected" in t["expect"]]
    assert len(drift) == 1
    t = drift[0]
    assert t["posture"] == "Reactive" and t["threshold"] == 1
    assert t["within"] == DriftPolicy.load().cooldown_s
    monitors = {d["name"] for d in spec["deployments"] if d["entrypoint"] == "flows/monitor.py:monitor_flow"}
    assert monitors == {"daily", "on-demand"}
