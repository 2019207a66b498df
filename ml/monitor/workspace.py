"""Monitor snapshots in an Evidently workspace (a local folder), so drift over time can be looked
at with ``evidently ui --workspace <path>``.

Layout (Evidently's local workspace, ``evidently.ui.workspace.Workspace``)::

    <data_root>/evidently/                      the workspace (default_workspace)
        <project id>/metadata.json              one project per monitored registered model:
                                                "skinflow-monitor/<model name>" (project_name)
        <project id>/snapshots/<run id>.json    one snapshot per monitor run (add_snapshot)
        .skinflow.lock                          serialises project creation and writes

Projects are found by name (``search_project``) and created on first use under the lock, so
concurrent runs share one project per model.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ml.settings import Settings, get_settings

PROJECT = "skinflow-monitor"
WORKSPACE_DIR = "evidently"
LOCK_FILE = ".skinflow.lock"  # not a project id: Evidently's listings skip it


def default_workspace(settings: Settings | None = None) -> Path:
    """``<data_root>/evidently``."""
    return Path((settings or get_settings()).data_root) / WORKSPACE_DIR


def project_name(model_uri: str) -> str:
    """``skinflow-monitor/<name>`` for a registered model (``models:/name@alias``,
    ``models:/name/N``), else ``skinflow-monitor`` (a ``runs:/`` or file model)."""
    if model_uri.startswith("models:/"):
        name = model_uri.removeprefix("models:/").split("@", 1)[0].split("/", 1)[0]
        if name:
            return f"{PROJECT}/{name}"
    return PROJECT


def open_workspace(path: str | Path):
    """Evidently's local workspace at ``path`` (created when missing)."""
    from evidently.ui.workspace import Workspace

    Path(path).mkdir(parents=True, exist_ok=True)
    return Workspace.create(str(path))


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.mkdir(parents=True, exist_ok=True)
    with open(path / LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def find_project(workspace, name: str):
    """The project called ``name`` (the oldest if several), or None."""
    found = sorted(workspace.search_project(name), key=lambda p: str(p.id))
    return found[0] if found else None


def add_snapshot(
    snapshot, path: str | Path, project: str, name: str | None = None, description: str | None = None
) -> dict[str, Any]:
    """Add ``snapshot`` to the project called ``project`` in the workspace at ``path`` (project
    created on first use); ``name`` names the run. Returns ``{workspace, project, project_id,
    snapshot_id}`` (ids as strings)."""
    path = Path(path)
    with _locked(path):
        workspace = open_workspace(path)
        found = find_project(workspace, project) or workspace.create_project(project, description=description)
        ref = workspace.add_run(found.id, snapshot, include_data=False, name=name)
    return {"workspace": str(path), "project": project, "project_id": str(found.id), "snapshot_id": str(ref.id)}


def list_snapshots(path: str | Path, project: str) -> list[tuple[str, Any]]:
    """``(snapshot id, SnapshotModel)`` of each run of a project, oldest first (read back through
    the workspace: ``list_runs``, ``get_run``); [] without the project.
    ``evidently.core.report.Snapshot.load_model(model)`` gives the snapshot again."""
    workspace = open_workspace(path)
    found = find_project(workspace, project)
    if found is None:
        return []
    runs = [(str(run_id), workspace.get_run(found.id, run_id)) for run_id in workspace.list_runs(found.id)]
    return sorted(((i, r) for i, r in runs if r is not None), key=lambda ir: ir[1].timestamp)
