"""Ray beyond one process: a local Ray started by a flow listens on 127.0.0.1 only."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

PYTHON = sys.executable
_LOOPBACK = ("127.0.0.1", "::ffff:127.0.0.1")


def test_a_local_ray_started_by_a_flow_listens_on_127_0_0_1(tmp_path):
    code = """
import json, ray, psutil
from ml.settings import Settings
from tasks.tuning import _ray_init
_ray_init(Settings(), cpus=1)
me = psutil.Process()
pids = {me.pid} | {p.pid for p in me.children(recursive=True)}
listen = sorted({c.laddr.ip for c in psutil.net_connections("inet") if c.status == "LISTEN" and c.pid in pids})
print(json.dumps({"nodes": [n["NodeManagerAddress"] for n in ray.nodes()], "gcs": ray.get_runtime_context().gcs_address,
                  "listen": listen, "processes": len(pids)}))
ray.shutdown()
"""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "SKINFLOW_RAY_ADDRESS")}
    out = subprocess.run([PYTHON, "-c", code], env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                         timeout=180, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["nodes"] == ["127.0.0.1"] and seen["gcs"].startswith("127.0.0.1:")
    assert seen["processes"] > 2 and seen["listen"] and set(seen["listen"]) <= set(_LOOPBACK), seen
