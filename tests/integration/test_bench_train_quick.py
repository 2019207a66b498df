"""bench/bench_train.py --quick end to end: every row written, the machine's CPU capability recorded.
Minutes on 2 cores (a pretrain, an LR range test and ten fits), hence slow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.bench_train import PRECISIONS, VARIANTS

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.mark.timeout(300)
def test_quick_profile_writes_every_row(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.bench_train", "--quick", "--out", str(out), "--threads", "2"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = out.read_text()
    for heading in (
        "## Machine",
        "## synth",
        "## Throughput",
        "## What this means",
        "flush denormal",
        "git commit",
        "--quick",
    ):
        assert heading in text
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    for variant in VARIANTS:
        for precision in PRECISIONS:
            # one row in the results table, one in the per-epoch curves table
            assert sum(line.startswith(f"| {variant} | {precision}") for line in rows) == 2, (
                f"missing row {variant}/{precision}"
            )
    data = json.loads((tmp_path / "out" / "bench_train.json").read_text())
    (ds,) = data["datasets"]
    assert ds["dataset"] == "synth"
    assert len(ds["runs"]) == len(VARIANTS) * len(PRECISIONS)
    assert all("error" not in r for r in ds["runs"])
    assert data["machine"]["torch_threads"] == 2
    assert data["machine"]["flush_denormal"] is True
    import torch

    from ml.train.precision import choose_precision

    chosen = choose_precision(torch.device("cpu"), True)
    assert data["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert data["machine"]["amp_precision"] == chosen.reason and chosen.reason in text
    assert {r["amp_dtype"] for r in ds["runs"] if r["precision"] == "amp"} == {chosen.dtype_name}
    base = next(r for r in ds["runs"] if (r["variant"], r["precision"]) == ("sgd", "fp32"))
    assert base["eta"] == pytest.approx(1.0)
    for p in PRECISIONS:
        assert data["throughput"]["step"][p]["ratio"] > 0
        assert data["throughput"]["loader"][p]["ratio"] > 0
