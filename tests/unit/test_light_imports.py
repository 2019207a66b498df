"""Verbs that need no model import no torch: ``skinflow validate`` and the ``skinflow data`` verbs
load neither torch, torchvision nor matplotlib (seconds per CLI call, for every user and every CLI
subprocess of the tests). Each module is imported in a fresh interpreter, in the order a verb
loads it; the first one that brings a heavy module in is named."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO

HEAVY = ("torch", "torchvision", "matplotlib")

LIGHT = {
    "validate": (
        "flows.validate",
        "flows.runtime",
        # what its tasks import when they run
        "ml.data.manifest",
        "ml.data.fingerprint",
        "ml.quality.features",
        "ml.quality.validation",
        "ml.tracking.runs",
    ),
    "data": ("flows.cli.data", "flows.cli.runner", "ml.data.synth", "ml.data.manifest", "ml.data.split"),
}

_PROBE = """
import importlib, json, sys
heavy = {heavy!r}
first = {{}}
for name in {modules!r}:
    importlib.import_module(name)
    for top in heavy:
        if top in sys.modules and top not in first:
            first[top] = name
print(json.dumps(first))
"""


def _heavy_imports(modules: tuple[str, ...]) -> dict[str, str]:
    code = _PROBE.format(heavy=HEAVY, modules=modules)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_validate_and_data_verbs_import_no_torch_or_matplotlib():
    found = {verb: _heavy_imports(modules) for verb, modules in LIGHT.items()}
    assert found == {verb: {} for verb in LIGHT}, f"heavy module <- first module that imported it: {found}"
