"""Monitor snapshots in an Evidently workspace: one project per registered model, one snapshot
per monitor run, read back through Evidently's workspace API."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest

from ml.monitor import drift
from ml.monitor.policy import DriftPolicy
from ml.monitor.workspace import add_snapshot, default_workspace, list_snapshots, project_name
from tests.unit.monitor_fakes import described

MODEL = "models:/skin-lesion-classifier@champion"


def test_two_monitor_runs_leave_two_snapshots_in_one_project(tmp_path):
    from evidently.core.report import Snapshot
    from evidently.ui.workspace import Workspace

    policy, reference = DriftPolicy.load(), described(60, seed=0)
    path, project = tmp_path / "evidently", project_name(MODEL)
    added, values, names = [], [], []
    for seed, shift in ((1, 0.0), (2, 0.8)):  # two monitor runs: measure, then into the workspace
        summary, snapshot = drift.measure_drift(reference, described(30, seed=seed, shift=shift), policy)
        names.append(f"batch{seed}: {summary['verdict']}")
        added.append(add_snapshot(snapshot, path, project, name=names[-1]))
        values.append(drift.report_embedding_scores(snapshot.dict()))

    workspace = Workspace.create(str(path))  # read back through Evidently's own API
    (found,) = workspace.search_project(project)
    assert [p.name for p in workspace.list_projects()] == [project]
    assert {str(i) for i in workspace.list_runs(found.id)} == {a["snapshot_id"] for a in added}
    assert {a["project_id"] for a in added} == {str(found.id)}
    for entry, value in zip(added, values, strict=True):
        model = workspace.get_run(found.id, entry["snapshot_id"])
        assert drift.report_embedding_scores(Snapshot.load_model(model).dict()) == pytest.approx(value)
    runs = list_snapshots(path, project)  # oldest first
    assert [i for i, _ in runs] == [a["snapshot_id"] for a in added]
    assert [m.name for _, m in runs] == names
    assert list_snapshots(path, "no such project") == []


def _tiny_snapshot(seed: int):
    from evidently import Report
    from evidently.metrics import ValueDrift

    rng = np.random.default_rng(seed)
    cur, ref = pd.DataFrame({"x": rng.normal(0, 1, 30)}), pd.DataFrame({"x": rng.normal(0, 1, 30)})
    return Report([ValueDrift(column="x")]).run(cur, ref)


def test_concurrent_runs_share_one_project(tmp_path):
    snapshots = [_tiny_snapshot(i) for i in range(4)]
    out: list[dict] = []
    threads = [
        threading.Thread(target=lambda s=s: out.append(add_snapshot(s, tmp_path, "skinflow-monitor/m")))
        for s in snapshots
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({e["project_id"] for e in out}) == 1 and len(out) == 4
    assert len(list_snapshots(tmp_path, "skinflow-monitor/m")) == 4


def test_project_per_registered_model_and_the_default_location(monkeypatch, tmp_path):
    from ml.settings import get_settings

    assert project_name(MODEL) == "skinflow-monitor/skin-lesion-classifier"
    assert project_name("models:/other/3") == "skinflow-monitor/other"
    assert project_name("runs:/abc/model") == project_name("/tmp/model.pt") == "skinflow-monitor"
    monkeypatch.setenv("SKINFLOW_DATA_ROOT", str(tmp_path / "data"))
    get_settings.cache_clear()
    try:
        assert default_workspace() == tmp_path / "data" / "evidently"
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
