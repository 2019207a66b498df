"""Fault: two retrains at once on the same dataset. Two real processes build the same image cache
at the same moment: it is decoded once (a file lock), the other process waits and reuses it. Two
`skinflow retrain` processes started together against a real `mlflow server` and one Prefect API
register distinct versions, and their promotion gates run one after the other (a Prefect global
concurrency limit): exactly one gate saw no champion, the other compared against the version the
first left, and the champion alias ends where those decisions put it (no lost update)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest
from mlflow import MlflowClient

from ml.data.manifest import build_manifest
from tests.conftest import REPO
from tests.faultkit import MlflowServer, retrain_command

pytestmark = pytest.mark.slow

BUILD = r"""
import sys, time
from pathlib import Path
from ml.data.cache import build_cache
from ml.data.manifest import Manifest
manifest, root, log, start = Manifest.load(sys.argv[1]), Path(sys.argv[2]), open(sys.argv[3], "w"), float(sys.argv[4])
while time.time() < start:  # both processes start building at the same moment
    time.sleep(0.005)
cache = build_cache(manifest, 64, root, workers=1, on_decode=lambda p: (log.write(p + "\n"), log.flush()))
print(cache.path, int(cache.images.sum()))
"""


def test_two_processes_building_one_cache_decode_it_once(tmp_path_factory, tmp_path) -> None:
    from ml.data.synth import SynthConfig, generate

    ds = tmp_path_factory.mktemp("cache-race") / "ds"
    generate(ds, SynthConfig(per_class=12, size=128, seed=1), progress=False)
    manifest = build_manifest(str(ds), progress=False)
    manifest.save(tmp_path / "m.csv")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    start = time.time() + 8  # both interpreters are up by then
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                BUILD,
                str(tmp_path / "m.csv"),
                str(tmp_path / "cache"),
                str(tmp_path / f"decoded{i}.txt"),
                str(start),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    decoded = [len((tmp_path / f"decoded{i}.txt").read_text().splitlines()) for i in range(2)]
    assert sorted(decoded) == [0, len(manifest.records)], decoded
    assert outs[0][0] == outs[1][0], "both processes got the same cache, with the same pixels"
    version_dir = tmp_path / "cache" / manifest.version
    assert sorted(p.name for p in version_dir.iterdir()) == ["64"], "no second copy nor temporary folder"


def test_two_retrains_at_once_register_two_versions_and_gate_in_turn(prefect_harness, synth_small, tmp_path) -> None:
    from prefect.settings import PREFECT_API_URL

    server = MlflowServer(tmp_path / "mlflow").start()
    try:
        model = f"race-{uuid.uuid4().hex[:6]}"
        cmd, env = retrain_command(synth_small, tmp_path, server.url, PREFECT_API_URL.value(), model, epochs=1)
        procs = [
            subprocess.Popen(
                [*cmd, "--out", str(tmp_path / f"out{i}")],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(2)
        ]
        outs = [p.communicate(timeout=600) for p in procs]
        assert all(p.returncode == 0 for p in procs), [o[1][-3000:] for o in outs]
        summaries = [json.loads(o[0][o[0].index("{") :]) for o in outs]

        client = MlflowClient(server.url)
        versions = sorted(int(s["model_version"]) for s in summaries)
        assert versions == [1, 2], "two distinct versions"
        gates = {s["model_version"]: client.get_model_version(model, s["model_version"]).tags for s in summaries}
        first = [
            v
            for v, t in gates.items()
            if t.get("gate_champion_before", "none") == "none" and t["gate_decision"] == "promoted"
        ]
        assert len(first) == 1, f"exactly one gate ran with no champion: {gates}"
        second = next(v for v in gates if v != first[0])
        final = client.get_registered_model(model).aliases["champion"]
        if gates[second]["gate_decision"] == "promoted":
            assert gates[second]["gate_champion_before"] == first[0], "compared with the champion the first left"
            assert final == second
        else:
            assert gates[second]["gate_decision"] in ("kept", "refused") and final == first[0]
        decoded_by = [("cache 32px" in o[1]) for o in outs]
        assert decoded_by.count(True) == 1, "the image cache was decoded by one of the two retrains only"
    finally:
        server.stop()
