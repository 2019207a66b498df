"""A user's mistake is one clear line and exit code 2, within seconds: no traceback, no retries.
Run as a user runs it: the installed `skinflow` in a subprocess, with an empty HOME."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import VENV_BIN


def _env(tmp: Path) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "SKINFLOW_"))}
    (tmp / "home").mkdir(exist_ok=True)
    return {
        **keep,
        "HOME": str(tmp / "home"),
        "PREFECT_HOME": str(tmp / "prefect"),
        "SKINFLOW_DATA_ROOT": str(tmp / "data"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db",
    }


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("user-errors")
    (root / "empty").mkdir()
    (root / "nolabel.csv").write_text("path,lbl\na.jpg,acne\n")
    (root / "quote.csv").write_text('path,label\n"a.jpg,acne\n')
    (root / "blank.csv").write_text("")
    (root / "binary.csv").write_bytes(bytes(range(256)) * 4)
    (root / "notes.txt").write_text("not a dataset\n")
    (root / "ds" / "acne").mkdir(parents=True)
    (root / "ds" / "acne" / "a.jpg").write_bytes(b"\xff\xd8 not decoded by the option checks")
    shipped = Path(__file__).resolve().parents[2] / "policies"
    validation = yaml.safe_load((shipped / "validation.yaml").read_text())
    validation.pop("class_balance")
    (root / "no_section.yaml").write_text(yaml.safe_dump(validation))
    promotion = (shipped / "promotion.yaml").read_text().replace("margin:", "margn:")
    (root / "promotion_typo.yaml").write_text(promotion)
    (root / "empty_policy.yaml").write_text("# nothing but a comment\n")
    (root / "bad_yaml.yaml").write_text("integrity:\n  min_side: [16\n  severity: critical\n")
    return root


CASES = {
    "validate a missing path": (["validate", "{root}/missing"], "does not exist"),
    "validate an empty folder": (["validate", "{root}/empty"], "no files found"),
    "validate a text file": (["validate", "{root}/notes.txt"], "neither an ImageFolder"),
    "manifest: CSV without label": (["data", "manifest", "{root}/nolabel.csv"], "missing column(s) ['label']"),
    "manifest: unterminated quote": (["data", "manifest", "{root}/quote.csv"], "cannot parse CSV"),
    "manifest: empty CSV": (["data", "manifest", "{root}/blank.csv"], "cannot parse CSV"),
    "manifest: binary CSV": (["data", "manifest", "{root}/binary.csv"], "cannot parse CSV"),
    "manifest: --out is a folder": (
        ["data", "manifest", "{root}/nolabel.csv", "--out", "{root}/empty"],
        "is a directory",
    ),
    "split: fractions over 1": (
        ["data", "split", "{root}/ds", "--out", "{root}/s.csv", "--val-frac", "0.6", "--test-frac", "0.5"],
        "must stay below 1",
    ),
    "train: unknown schedule": (["train", "--data", "{root}/ds", "--schedule", "cosine"], "schedule"),
    "train: zero epochs": (["train", "--data", "{root}/ds", "--epochs", "0"], "epochs"),
    "tune: bad --amp": (["tune", "--data", "{root}/ds", "--amp", "maybe"], "--amp takes on, off"),
    "retrain: missing data": (["retrain", "--data", "{root}/missing"], "does not exist"),
    "stack up: unknown --db": (["stack", "up", "--db", "mysql"], "--db must be sqlite or postgres"),
    # broken policy files are refused before any work, naming the file and the key
    "validate: a policy missing a section": (
        ["validate", "{root}/ds", "--policy", "{root}/no_section.yaml"],
        "no_section.yaml: missing validation policy section 'class_balance'",
    ),
    "validate: a policy that is not YAML": (
        ["validate", "{root}/ds", "--policy", "{root}/bad_yaml.yaml"],
        "bad_yaml.yaml: line ",
    ),
    "retrain: a mistyped promotion key": (
        ["retrain", "--data", "{root}/ds", "--policy", "{root}/promotion_typo.yaml"],
        "unknown promotion policy key 'margn' (did you mean 'margin'?)",
    ),
    "drift: an empty policy": (
        ["drift", "{root}/ds", "--policy", "{root}/empty_policy.yaml"],
        "empty_policy.yaml: the drift policy file is empty",
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_user_errors_are_one_line_and_exit_2(case, inputs, tmp_path):
    args, expected = CASES[case]
    args = [a.format(root=inputs) for a in args]
    started = time.monotonic()
    out = subprocess.run(
        [str(VENV_BIN / "skinflow"), *args],
        env=_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    took = time.monotonic() - started
    assert out.returncode == 2, out.stdout[-1500:] + out.stderr[-1500:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expected in errors[0], out.stderr[-1500:]
    assert "Traceback" not in out.stderr + out.stdout
    assert "Retry" not in out.stderr + out.stdout, "a user error is not retried"
    # within seconds: far from the 17 s of three retries (2+5+10), whatever Prefect's start costs
    assert took < 45, f"{case} took {took:.0f}s"
    assert not list(inputs.glob(".*.*")), "no temporary file is left behind"


def test_debug_shows_the_traceback(inputs, tmp_path):
    out = subprocess.run(
        [str(VENV_BIN / "skinflow"), "--debug", "data", "manifest", str(inputs / "nolabel.csv")],
        env=_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "Traceback" in out.stderr and "missing column(s)" in out.stderr


def test_help_documents_the_exit_codes():
    out = subprocess.run(
        [str(VENV_BIN / "skinflow"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "160"},
    )
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    for code in ("0 ok", "1 critical findings", "2 usage or input errors", "3 a service"):
        assert code in text


USAGE_CASES = {
    "a mistyped option": (["train", "--modle", "resnet18"], "No such option: --modle (Possible options: --model)"),
    "a mistyped option of retrain": (["retrain", "--modle", "x"], "No such option: --modle"),
    "an unknown option": (["validate", "{root}/ds", "--no-such-option"], "No such option: --no-such-option"),
    "a missing argument": (["predict"], "Missing argument 'source'"),
    "a value of the wrong type": (["train", "--epochs", "many"], "Invalid value for '--epochs'"),
    "an unknown verb": (["trian"], "No such command 'trian'"),
}


@pytest.mark.parametrize("case", list(USAGE_CASES), ids=list(USAGE_CASES))
def test_usage_errors_are_clicks_message_and_exit_2_with_nothing_prepared(case, inputs, tmp_path):
    """What click finds while parsing is click's message (the closest option name suggested), exit 2,
    before any verb runs: no Prefect database prepared, no file written."""
    args, expected = USAGE_CASES[case]
    env = _env(tmp_path)
    (tmp_path / "work").mkdir()
    out = subprocess.run(
        [str(VENV_BIN / "skinflow"), *[a.format(root=inputs) for a in args]],
        env=env,
        cwd=tmp_path / "work",
        capture_output=True,
        text=True,
        timeout=120,
    )
    said = out.stdout + out.stderr
    assert out.returncode == 2, said[-2000:]
    assert expected in out.stderr and "Usage: skinflow" in out.stderr, said[-2000:]
    assert "preparing Prefect" not in said and "Traceback" not in said and "error: " not in said, said[-2000:]
    assert not any((tmp_path / "work").iterdir()) and not any((tmp_path / "home").iterdir())
    assert not (tmp_path / "prefect").exists() and not (tmp_path / "data").exists()


_DRIVER = """
import json, sys
from flows.cli import main
try:
    main(sys.argv[1:])
except SystemExit as done:
    code = done.code
print(json.dumps({"code": code, "loaded": sorted({m.split(".")[0] for m in sys.modules} & {"mlflow", "prefect"})}))
"""


@pytest.mark.parametrize(
    "args",
    [["validate", "{root}/missing"], ["data", "manifest", "{root}/nolabel.csv"]],
    ids=["refused option value", "error raised by the library"],
)
def test_a_user_error_is_classified_without_mlflow_or_prefect(args, inputs, tmp_path):
    """A user error exits 2 without importing MLflow or Prefect (they took seconds to import
    only to compare exception types)."""
    out = subprocess.run(
        [str(VENV_BIN / "python"), "-c", _DRIVER, *[a.format(root=inputs) for a in args]],
        env=_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"code": 2, "loaded": []}, out.stderr[-2000:]
    assert [line for line in out.stderr.splitlines() if line.startswith("error: ")], out.stderr[-2000:]
