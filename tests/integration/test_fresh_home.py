"""The first run on a machine that has never run Prefect or MLflow, as a newcomer meets it: the
installed ``skinflow`` console script in a subprocess with a new empty HOME and PREFECT_HOME, no
Prefect API or MLflow store configured, in a folder with no ``mlflow.db``. Its first flow starts
Prefect's ephemeral server, which must create and migrate its SQLite database before it answers
(flows/runtime.py); MLflow creates ``mlflow.db`` in the working folder. Reading ``--help`` first
prepares and creates nothing."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import REPO, VENV_BIN


def _fresh_env(home, prefect_home) -> dict[str, str]:
    """The caller's environment without any Prefect, MLflow, skinflow, Ray or XDG configuration."""
    dropped = ("PREFECT_", "MLFLOW_", "SKINFLOW_", "RAY_", "XDG_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    # PYTHONPATH: this checkout's code behind the installed console script
    return {**env, "HOME": str(home), "PREFECT_HOME": str(prefect_home), "PYTHONPATH": str(REPO)}


def test_validate_on_a_machine_that_never_ran_prefect_or_mlflow(tmp_path):
    from ml.data.synth import SynthConfig, generate

    home, prefect_home, cwd = (tmp_path / name for name in ("home", "prefect-home", "work"))
    for folder in (home, prefect_home, cwd):
        folder.mkdir()
    ds = tmp_path / "ds"
    generate(ds, SynthConfig(per_class=10, size=64, seed=0), progress=False)  # passes the validation policy
    skinflow = VENV_BIN / "skinflow"
    assert skinflow.is_file(), f"{skinflow}: the console script is installed by `make install`"

    out = subprocess.run(
        [str(skinflow), "validate", str(ds)],
        env=_fresh_env(home, prefect_home),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )

    log = out.stdout[-3000:] + out.stderr[-3000:]
    assert out.returncode == 0, log
    assert "Timed out" not in out.stderr, log
    assert "preparing Prefect's local database (first run only" in out.stderr, log
    assert (prefect_home / "prefect.db").stat().st_size > 0, "Prefect's database was not created in PREFECT_HOME"
    assert not (home / ".prefect").exists(), "PREFECT_HOME was not honoured"
    assert (cwd / "mlflow.db").stat().st_size > 0, "the default MLflow store is sqlite:///mlflow.db in the cwd"
    assert "FAIL" not in out.stdout and "data docs" in out.stdout, log
    assert "Finished in state Completed()" in out.stderr + out.stdout, log


def _command_paths() -> list[list[str]]:
    """Every command and subcommand of the app: the click command tree, walked."""
    import typer

    from flows.cli import app

    def walk(cmd, path):
        yield path
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, [*path, name])

    return list(walk(typer.main.get_command(app), []))


@pytest.mark.parametrize("path", _command_paths(), ids=lambda p: " ".join(p) or "skinflow")
def test_help_touches_nothing(path, tmp_path):
    """``--help`` of the app and of every verb answers without preparing Prefect's database or
    importing MLflow: no file appears in HOME, PREFECT_HOME, the data root or the working folder."""
    folders = [tmp_path / name for name in ("home", "prefect-home", "data-root", "work")]
    for folder in folders:
        folder.mkdir()
    home, prefect_home, data_root, cwd = folders
    out = subprocess.run(
        [str(VENV_BIN / "skinflow"), *path, "--help"],
        env={**_fresh_env(home, prefect_home), "SKINFLOW_DATA_ROOT": str(data_root)},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "Usage" in out.stdout
    assert "preparing Prefect" not in out.stdout + out.stderr, out.stderr
    for folder in folders:
        assert not any(folder.iterdir()), f"--help created {sorted(p.name for p in folder.rglob('*'))} in {folder}"
