"""Fault: a Ray worker node is killed mid-tune. A real two-node Ray cluster on 127.0.0.1 (the
`ray_two_nodes` fixture of test_ray_cluster.py); the head's CPU is held by a placeholder actor so
that the trial starts on the second node. Once the trial has checkpointed an epoch, the second
node's whole process group (raylet and its workers) is SIGKILLed; the placeholder then frees the
head, Tune retries the trial there from its checkpoint (FailureConfig(max_failures=1)), the tune
completes, and the trial's MLflow child run is continued, not duplicated, and ends FINISHED."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time

import pytest
from mlflow import MlflowClient

from tests.integration.test_ray_cluster import PYTHON, ray_two_nodes  # noqa: F401 - the fixture

pytestmark = pytest.mark.slow

# long enough that the trial cannot finish between its first logged epoch and the kill (5 raced on a fast CPU)
EPOCHS = 20

_DRIVER = """
import json, sys, threading, time
from pathlib import Path
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from ml.data.cache import build_cache
from ml.data.manifest import build_manifest
from ml.data.split import split_manifest
from ml.settings import get_settings
from ml.tracking.runs import absolute_tracking_uri
from tasks.mlflow_tasks import close_run, open_run
from ml.train.ray_runtime import ray_init
from ml.train.sweep import TrialData
from tasks.tuning import run_tune

data_dir, root, epochs = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
cache = build_cache(split_manifest(build_manifest(data_dir), val_frac=0.25, seed=0, max_distance=None), 32,
                    root / "cache")
data = TrialData.from_cache(cache)
ray_init(get_settings())
head = ray.get_runtime_context().get_node_id()

@ray.remote(num_cpus=1)
class Placeholder:
    def ready(self):
        return True

holder = Placeholder.options(scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=False)).remote()
ray.get(holder.ready.remote())

def free_the_head_once_a_node_died():
    while all(n["Alive"] for n in ray.nodes()):
        time.sleep(0.2)
    ray.kill(holder)

threading.Thread(target=free_the_head_once_a_node_died, daemon=True).start()
parent, experiment_id = open_run.fn("skinflow-tune", "node killed")
res = run_tune.fn(data, (1e-3, 1e-2), {"batch_size": 16}, ["sgdr"], [False], ["resnet18"], 1, epochs,
                  parent, experiment_id, absolute_tracking_uri(get_settings().mlflow_tracking_uri), name="t-kill",
                  checkpoint_interval_s=0, max_failures=1)
close_run.fn(parent)
print(json.dumps({"trials": [{k: t[k] for k in ("node_id", "epochs", "error", "mlflow_run_id")} for t in res["trials"]],
                  "failed": res["failed"], "head": head, "parent": parent, "experiment_id": experiment_id}))
"""


def _trial_run_on_second_node(db: str, deadline: float) -> tuple[str, str] | None:
    """(run id, node id) of the trial's MLflow run once it logged epoch 1 (read straight from the store)."""
    while time.monotonic() < deadline:
        try:
            with sqlite3.connect(db, timeout=5) as con:
                row = con.execute(
                    "select t.run_uuid, t.value from tags t join metrics m on m.run_uuid = t.run_uuid "
                    "where t.key = 'ray_node_id' and m.key = 'val_loss' and m.step >= 1 limit 1"
                ).fetchone()
            if row:
                return row
        except sqlite3.OperationalError:  # tables not created yet, or locked for a moment
            pass
        time.sleep(0.2)
    return None


def test_a_killed_ray_node_s_trial_is_retried_on_the_surviving_node(ray_two_nodes, synth_small, tmp_path):  # noqa: F811
    db = tmp_path / "mlflow.db"
    env = {
        **ray_two_nodes["env"],
        "RAY_ADDRESS": ray_two_nodes["address"],
        "SKINFLOW_DATA_ROOT": str(tmp_path / "data"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{db}",
    }
    driver = subprocess.Popen(
        [PYTHON, "-c", _DRIVER, str(synth_small), str(tmp_path), str(EPOCHS)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        seen = _trial_run_on_second_node(str(db), time.monotonic() + 300)
        assert seen is not None and driver.poll() is None, "the trial never logged an epoch"
        run_id, first_node = seen
        os.killpg(ray_two_nodes["pgids"][1], signal.SIGKILL)  # the second node: raylet, object store, workers
        out, err = driver.communicate(timeout=400)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, out[-2000:] + err[-4000:]
    res = json.loads(out.strip().splitlines()[-1])
    assert first_node != res["head"], "the trial started on the second node"
    (trial,) = res["trials"]
    assert trial["error"] is None and not res["failed"] and trial["epochs"] == EPOCHS
    assert trial["node_id"] == res["head"], "retried on the surviving node"
    assert trial["mlflow_run_id"] == run_id, "the same MLflow run continued"

    client = MlflowClient(f"sqlite:///{db}")
    children = client.search_runs([res["experiment_id"]], f"tags.`mlflow.parentRunId` = '{res['parent']}'")
    assert [r.info.run_id for r in children] == [run_id], "one child run, not duplicated"
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["ray_node_id"] == res["head"]
    assert run.data.tags["trial_attempts"] == "2"
    restored = int(run.data.tags["restored_from_epoch"])
    assert restored >= 1, "the retry started from a checkpoint, not from scratch"
    steps = [m.step for m in client.get_metric_history(run_id, "val_loss")]
    assert sorted(set(steps)) == list(range(1, EPOCHS + 1))
    assert all(steps.count(s) == 1 for s in range(1, restored + 1)), "checkpointed epochs were not trained again"
    assert not client.search_runs([res["experiment_id"]], "attributes.status = 'RUNNING'")
