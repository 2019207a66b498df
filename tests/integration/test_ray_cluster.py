"""Ray beyond one process: a local Ray started by a flow listens on 127.0.0.1 only, and Tune
trials run on another node of a real two-node cluster (both nodes on 127.0.0.1), with their
data from Ray's object store rather than the driver's disk."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, VENV_BIN, free_port

pytestmark = pytest.mark.slow

PYTHON = sys.executable
# Ray (on Linux) turns --node-ip-address=127.0.0.1 into the machine's network address, and a node
# with that address listens on every interface. Its single-machine switch
# (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0) keeps 127.0.0.1 but refuses to start a second node. So
# the head starts with the switch, and the second node with `ray start` taking the loopback
# address as given (Ray's own resolver bypassed for that one command).
_SECOND_NODE = (
    "import sys; import ray._private.services as s; s.resolve_ip_for_localhost = lambda host: host; "
    "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()"
)
_LOOPBACK = ("127.0.0.1", "::ffff:127.0.0.1")


def _listening(pids: set[int]) -> list[str]:
    import psutil
    import ray  # noqa: F401 - Ray's packaged psutil

    return sorted({c.laddr.ip for c in psutil.net_connections("inet") if c.status == "LISTEN" and c.pid in pids})


def _group_members(pgids: list[int]) -> list[int]:
    import psutil
    import ray  # noqa: F401

    out = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) in pgids:
                out.append(p.pid)
        except (ProcessLookupError, psutil.Error):
            pass
    return out


def test_a_local_ray_started_by_a_flow_listens_on_127_0_0_1(tmp_path):
    code = """
import json, ray, psutil
from ml.settings import Settings
from ml.train.ray_runtime import ray_init
ray_init(Settings(), cpus=1)
me = psutil.Process()
pids = {me.pid} | {p.pid for p in me.children(recursive=True)}
listen = sorted({c.laddr.ip for c in psutil.net_connections("inet") if c.status == "LISTEN" and c.pid in pids})
print(json.dumps({"nodes": [n["NodeManagerAddress"] for n in ray.nodes()], "gcs": ray.get_runtime_context().gcs_address,
                  "listen": listen, "processes": len(pids)}))
ray.shutdown()
"""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "SKINFLOW_RAY_ADDRESS")}
    out = subprocess.run(
        [PYTHON, "-c", code],
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["nodes"] == ["127.0.0.1"] and seen["gcs"].startswith("127.0.0.1:")
    assert seen["processes"] > 2 and seen["listen"] and set(seen["listen"]) <= set(_LOOPBACK), seen


@pytest.fixture()
def ray_two_nodes():
    """A real two-node Ray cluster on 127.0.0.1 with token authentication (its own token): a head
    with 1 CPU and a second node with 1 CPU and the custom resource ``worker_node``, each started
    by `ray start` in its own process group and temp dir. Stopped by ending those two process
    groups only: `ray stop` finds Ray processes by name, every Ray on the machine (it has no
    --address)."""
    port = free_port()
    # short paths: Ray's socket paths under the temp dir must stay below ~107 characters
    temp = [Path(tempfile.mkdtemp(prefix="rayt", dir="/tmp")) for _ in range(2)]
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "SKINFLOW_RAY_ADDRESS")}
    env.update(
        {
            "PYTHONPATH": str(REPO),
            "OMP_NUM_THREADS": "1",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(32),
            "RAY_USAGE_STATS_ENABLED": "0",
        }
    )
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats", "--object-store-memory=100000000"]
    nodes = [
        (
            [
                str(VENV_BIN / "ray"),
                "start",
                "--head",
                f"--port={port}",
                "--include-dashboard=false",
                f"--temp-dir={temp[0]}",
                *common,
            ],
            {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"},
        ),
        (
            [
                PYTHON,
                "-c",
                _SECOND_NODE,
                "start",
                f"--address=127.0.0.1:{port}",
                '--resources={"worker_node": 1}',
                f"--temp-dir={temp[1]}",
                *common,
            ],
            {},
        ),
    ]
    pgids: list[int] = []
    try:
        for i, (cmd, extra) in enumerate(nodes):
            log = temp[i] / "start.log"
            with open(log, "wb") as f:
                proc = subprocess.Popen(
                    cmd, env={**env, **extra}, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
                )
            pgids.append(proc.pid)  # a new session: its process group id is its pid
            assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
        # a driver on this machine registers as 127.0.0.1 too (single-machine switch)
        yield {"address": f"127.0.0.1:{port}", "env": {**env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}, "pgids": pgids}
    finally:
        for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 10)):
            for pgid in pgids:
                try:
                    os.killpg(pgid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while _group_members(pgids) and time.monotonic() < deadline:
                time.sleep(0.3)
        left = _group_members(pgids)
        for d in temp:
            shutil.rmtree(d, ignore_errors=True)
        assert not left, f"Ray processes left running: {left}"


_DRIVER = """
import json, shutil, sys
from pathlib import Path
import ray
from ml.data.cache import build_cache
from ml.data.manifest import build_manifest
from ml.data.split import split_manifest
from ml.settings import get_settings
from ml.tracking.runs import absolute_tracking_uri
from ml.train.sweep import TrialData
from tasks.mlflow_tasks import open_run
from tasks.tuning import run_tune

data_dir, root = sys.argv[1], Path(sys.argv[2])
cache = build_cache(split_manifest(build_manifest(data_dir), val_frac=0.25, seed=0, max_distance=None), 32,
                    root / "cache")
data = TrialData.from_cache(cache)
shutil.rmtree(root / "cache")  # what the trial trains on comes from the object store, not this disk
parent, experiment_id = open_run.fn("skinflow-tune", "two nodes")
res = run_tune.fn(data, (1e-3, 1e-2), {"batch_size": 16, "snapshots": 2}, ["sgdr"], [False], ["resnet18"], 1, 1,
                  parent, experiment_id, absolute_tracking_uri(get_settings().mlflow_tracking_uri), name="t-nodes",
                  checkpoint_interval_s=0, trial_resources={"worker_node": 1})
nodes = {n["NodeID"]: sorted(n["Resources"]) for n in ray.nodes() if n["Alive"]}
print(json.dumps({"trials": [{k: t[k] for k in ("node_id", "epochs", "error", "val_ensemble_balanced_accuracy",
                                                "mlflow_run_id")} for t in res["trials"]], "nodes": nodes,
                  "driver_node": ray.get_runtime_context().get_node_id(), "experiment_id": experiment_id}))
"""


def test_a_trial_runs_on_the_second_node_with_its_data_from_the_object_store(ray_two_nodes, synth_small, tmp_path):
    from mlflow import MlflowClient

    env = {
        **ray_two_nodes["env"],
        "RAY_ADDRESS": ray_two_nodes["address"],
        "SKINFLOW_DATA_ROOT": str(tmp_path / "data"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
    }
    out = subprocess.run(
        [PYTHON, "-c", _DRIVER, str(synth_small), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(seen["nodes"]) == 2, seen["nodes"]
    (second,) = [node for node, resources in seen["nodes"].items() if "worker_node" in resources]
    (trial,) = seen["trials"]
    assert trial["error"] is None and trial["epochs"] == 1 and trial["val_ensemble_balanced_accuracy"] is not None
    assert trial["node_id"] == second != seen["driver_node"], "the trial ran on the second node"
    run = MlflowClient(env["MLFLOW_TRACKING_URI"]).get_run(trial["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["ray_node_id"] == second
    # both nodes listen on 127.0.0.1 only
    assert set(_listening(set(_group_members(ray_two_nodes["pgids"])))) <= set(_LOOPBACK)
