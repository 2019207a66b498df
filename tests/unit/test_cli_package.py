"""The CLI package (flows/cli/): importing it and reading any --help imports no Prefect, MLflow or
torch; errors are classified by the classes already imported; the verbs are listed in order."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest
import typer

from flows.cli import VERBS, app
from flows.cli.errors import (
    EXIT_FINDINGS,
    EXIT_INTERNAL,
    EXIT_SERVICE,
    EXIT_USAGE,
    FINDINGS,
    INVALID,
    SERVICE,
    STORAGE,
    USER_PATH,
    classify,
    is_click_error,
)
from tests.conftest import REPO

HEAVY = ("prefect", "mlflow", "torch", "ray", "great_expectations", "evidently", "matplotlib")


def _python(code: str, cwd=REPO, env: dict | None = None) -> dict:
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_every_help_imports_no_heavy_module_and_creates_no_file(tmp_path):

    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "SKINFLOW_"))}
    env = {**keep, "HOME": str(home), "PREFECT_HOME": str(tmp_path / "prefect"), "PYTHONPATH": str(REPO)}
    env["SKINFLOW_DATA_ROOT"] = str(tmp_path / "data")
    result = _python(
        f"""
import contextlib, io, json, sys
import typer
from flows.cli import app, main

def walk(cmd, path):
    yield path
    for name, sub in getattr(cmd, "commands", {{}}).items():
        yield from walk(sub, [*path, name])

codes = {{}}
for path in walk(typer.main.get_command(app), []):
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main([*path, "--help"])
        except SystemExit as done:
            codes[" ".join(path)] = done.code
heavy = sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r}))
print(json.dumps({{"codes": codes, "heavy": heavy}}))
""",
        cwd=work,
        env=env,
    )
    created = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p not in (work, home))
    assert created == [], f"--help created {created}"
    assert len(result["codes"]) >= 20 and set(result["codes"].values()) == {0}, result["codes"]
    assert result["heavy"] == [], f"--help imported {result['heavy']}"


def test_classifying_plain_errors_imports_nothing():
    result = _python(
        """
import json, sys
from flows.cli.errors import classify
codes = [classify(e)[0] for e in (ValueError("v"), FileNotFoundError("f"), ConnectionError("c"), RuntimeError("r"))]
print(json.dumps({"codes": codes, "loaded": sorted({m.split(".")[0] for m in sys.modules} & {"mlflow", "prefect"})}))
"""
    )
    assert result == {"codes": [EXIT_USAGE, EXIT_USAGE, EXIT_SERVICE, EXIT_INTERNAL], "loaded": []}


@pytest.mark.parametrize("name", [*FINDINGS, *SERVICE, *STORAGE, *USER_PATH, *INVALID])
def test_the_classes_named_for_classification_exist(name):
    """A class renamed or moved would silently fall through to exit 4."""
    module, _, attr = name.partition(":")
    assert isinstance(getattr(importlib.import_module(module), attr), type), name


def test_a_click_usage_error_is_recognised():
    """typer parses with click, or with its own copy of it (typer._click): either is recognised."""
    with pytest.raises(Exception) as raised:
        typer.main.get_command(app).main(["train", "--modle", "x"], standalone_mode=False)
    assert is_click_error(raised.value) and raised.value.exit_code == EXIT_USAGE
    assert any(c.__name__ == "ClickException" for c in type(raised.value).__mro__)
    assert not is_click_error(ValueError("not a usage error"))


def test_classify_the_project_errors():
    from pydantic import BaseModel, ValidationError

    from flows.validate import ValidationFailed
    from ml.storage import BucketNotFoundError, ObjectNotFoundError, StorageFullError
    from ml.tracking.runs import ServiceUnavailableError

    class Cfg(BaseModel):
        epochs: int

    with pytest.raises(ValidationError) as invalid:
        Cfg(epochs="many")
    assert classify(ValidationFailed("2 critical checks failed")) == (EXIT_FINDINGS, "2 critical checks failed")
    assert classify(ServiceUnavailableError("MLflow at x did not answer"))[0] == EXIT_SERVICE
    assert classify(BucketNotFoundError("no bucket"))[0] == EXIT_SERVICE
    assert classify(StorageFullError("disk full"))[0] == EXIT_SERVICE
    assert classify(ObjectNotFoundError("s3://b/k"))[0] == EXIT_USAGE
    code, line = classify(invalid.value)
    assert code == EXIT_USAGE and "\n" not in line and "epochs" in line


def test_an_out_folder_that_cannot_be_made_is_the_user_s_mistake_exit_2():
    """/sys refuses new folders even to root (EPERM): the CLI answers exit 2 naming the path."""
    from ml.storage import atomic_write

    with pytest.raises(Exception) as raised:
        atomic_write("/sys/skinflow-out/report.json", b"{}")
    code, line = classify(raised.value)
    assert code == EXIT_USAGE and "/sys/skinflow-out/report.json" in line and "choose a folder" in line


def test_an_over_long_out_path_is_the_user_s_mistake_exit_2(tmp_path):
    from ml.storage import atomic_write

    long = tmp_path / ("x" * 300) / "report.json"
    with pytest.raises(Exception) as raised:
        atomic_write(long, b"{}")
    code, line = classify(raised.value)
    assert code == EXIT_USAGE and "File name too long" in line and "choose a folder you can write to" in line


def test_verbs_are_listed_in_order_and_each_once():
    root = typer.main.get_command(app)
    listed = root.list_commands(None)
    assert listed == list(VERBS), "a new verb belongs in flows.cli.VERBS, where --help lists it"
