"""On the local stack (moto S3, MLflow server, Prefect server + worker; infra/stack.sh): a
drifted batch through `skinflow drift` emits skinflow.drift.detected, the deployment trigger of
retrain/on-demand (prefect.yaml) creates one retrain flow run, and a second drift inside the
cooldown creates none. The work pool is paused meanwhile; then, with the project file changed
(the deployment's SKINFLOW_PROJECT_FILE), the pool resumes and the one triggered retrain runs on the
worker: it trains the data and the backbone the project file names."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, read_stack_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
PREFECT = str(Path(sys.executable).parent / "prefect")


def _retrain_runs(env: dict) -> list:
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowFilter, FlowFilterName

    async def read():
        async with PrefectClient(api=env["PREFECT_API_URL"]) as client:
            return await client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["retrain"])),
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["on-demand"])),
            )

    return asyncio.run(read())


PROBE = "skinflow.test.probe"


def _nightly_runs(env: dict) -> list:
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowFilter, FlowFilterName

    async def read():
        async with PrefectClient(api=env["PREFECT_API_URL"]) as client:
            return await client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["retrain"])),
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["nightly"])),
            )

    return asyncio.run(read())


def _create_probe_automation(env: dict) -> None:
    """An automation that runs retrain/nightly (the pool is paused: it only appears as a scheduled
    run) on a probe event. The triggers service judges events in the order they arrive, so once a
    probe sent after some events has acted, those events have been judged too."""
    from prefect.client.orchestration import PrefectClient
    from prefect.events.actions import RunDeployment
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    async def create():
        async with PrefectClient(api=env["PREFECT_API_URL"]) as client:
            nightly = await client.read_deployment_by_name("retrain/nightly")
            trigger = EventTrigger(expect={PROBE}, posture=Posture.Reactive, threshold=1, within=0)
            action = RunDeployment(source="selected", deployment_id=nightly.id)
            await client.create_automation(AutomationCore(name="test-probe", trigger=trigger, actions=[action]))

    asyncio.run(create())


def _judged_so_far(env: dict, timeout: float) -> bool:
    """Send probe events until the probe automation acts (a retrain/nightly run appears): every
    event sent before the first probe has then been judged by the triggers service."""
    before = len(_nightly_runs(env))
    code = f"from prefect.events import emit_event; emit_event(event={PROBE!r}, resource={{'prefect.resource.id': {PROBE!r}}})"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=120, check=True)
        for _ in range(10):
            if len(_nightly_runs(env)) > before:
                return True
            time.sleep(1)
    return False


def _delete(env: dict, runs: list) -> None:
    from prefect.client.orchestration import PrefectClient

    async def delete():
        async with PrefectClient(api=env["PREFECT_API_URL"]) as client:
            for run in runs:
                await client.delete_flow_run(run.id)

    asyncio.run(delete())


@pytest.fixture(scope="module")
def stack_env(local_stack, tmp_path_factory):
    run_dir, _, _, _ = local_stack
    env = {
        **os.environ,
        **read_stack_env(run_dir / "env"),
        "PREFECT_HOME": str(run_dir / "cli-home"),
        "PWD": str(REPO),
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("SKINFLOW_DRIFT_APPRISE_URL", None)
    out = subprocess.run(
        [PREFECT, "--no-prompt", "deploy", "--all"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    pause = subprocess.run(
        [PREFECT, "work-pool", "pause", "skinflow-pool"], env=env, capture_output=True, text=True, timeout=120
    )
    assert pause.returncode == 0, pause.stderr
    _create_probe_automation(env)  # long before its first probe: the triggers service has loaded it by then
    try:
        yield env
    finally:
        _delete(env, _retrain_runs(env) + _nightly_runs(env))
        subprocess.run([PREFECT, "work-pool", "resume", "skinflow-pool"], env=env, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def monitored(stack_env, tmp_path_factory):
    """A model in the stack's MLflow (a ResNet-18 at random initialisation: the descriptors
    decide here), a reference set and a strongly shifted batch."""
    import mlflow
    import torch

    from ml.data.synth import LABELS, SynthConfig, generate
    from ml.tracking.models import log_model_weights, model_meta
    from ml.train.models import build_model

    root = tmp_path_factory.mktemp("monitor-e2e")
    generate(root / "reference", SynthConfig(per_class=5, size=24, seed=0), progress=False)
    generate(root / "batch", SynthConfig(per_class=3, size=24, seed=5, noise=0.08, gamma=(1.8, 1.8)), progress=False)
    client = mlflow.MlflowClient(tracking_uri=stack_env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("monitor-e2e") or client.get_experiment(client.create_experiment("monitor-e2e"))
    run = client.create_run(exp.experiment_id)
    torch.manual_seed(0)
    old = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL")}
    os.environ.update({k: stack_env[k] for k in old})
    try:
        mlflow.set_tracking_uri(stack_env["MLFLOW_TRACKING_URI"])
        log_model_weights(
            run.info.run_id,
            build_model("resnet18", len(LABELS)).state_dict(),
            [],
            model_meta("resnet18", list(LABELS), 0, {"norm": [[0.5] * 3, [0.25] * 3], "size": 24}),
        )
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    client.set_terminated(run.info.run_id)
    return {"root": root, "model": f"runs:/{run.info.run_id}/model"}


def _drift(env: dict, monitored: dict, out: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "flows.cli",
        "drift",
        str(monitored["root"] / "batch"),
        "--model",
        monitored["model"],
        "--reference",
        str(monitored["root"] / "reference"),
        "--out",
        str(monitored["root"] / out),
    ]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)


def _wait_for_runs(env: dict, n: int, timeout: float) -> list:
    deadline = time.monotonic() + timeout
    runs = _retrain_runs(env)
    while len(runs) < n and time.monotonic() < deadline:
        time.sleep(1)
        runs = _retrain_runs(env)
    return runs


def test_drift_starts_one_retrain_and_none_within_the_cooldown(stack_env, monitored, tmp_path):
    assert _retrain_runs(stack_env) == []
    first = _drift(stack_env, monitored, "first")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "DRIFT VERDICT: DRIFT" in first.stdout and "event: sent" in first.stdout
    assert "ephemeral" not in first.stdout  # a real server: the note about events is not printed
    runs = _wait_for_runs(stack_env, 1, 60)
    assert len(runs) == 1, "the drift event started no retrain flow run"
    assert runs[0].state.type.value == "SCHEDULED"  # the pool is paused: nobody runs it
    second = _drift(stack_env, monitored, "second")
    assert second.returncode == 0 and "event: sent" in second.stdout, second.stderr[-3000:]
    assert _judged_so_far(stack_env, 120), "the triggers service judged no probe sent after the second drift"
    assert len(_retrain_runs(stack_env)) == 1, "a second drift inside the cooldown started another retrain"
    # the run the drift event started trains what the project file names (one test: xdist may run
    # other modules between two tests of this one, and the trigger's cooldown allows one run an hour)
    _triggered_run_trains_the_project(stack_env, runs[0], tmp_path)


def _set_project_file(env: dict, path: Path | None) -> None:
    """Name ``path`` as the project file of retrain/on-demand's runs (the worker reads a
    deployment's job variables when it submits a run); None: as prefect.yaml deploys it."""
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.actions import DeploymentUpdate

    async def update():
        async with PrefectClient(api=env["PREFECT_API_URL"]) as client:
            dep = await client.read_deployment_by_name("retrain/on-demand")
            job_vars = {k: v for k, v in (dep.job_variables or {}).items() if k != "env"}
            if path is not None:
                job_vars["env"] = {"SKINFLOW_PROJECT_FILE": str(path)}
            await client.update_deployment(dep.id, DeploymentUpdate(job_variables=job_vars))

    asyncio.run(update())


def _pool(env: dict, verb: str) -> None:
    out = subprocess.run([PREFECT, "work-pool", verb, "skinflow-pool"], env=env, capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr


def _wait_final(env: dict, run_id, timeout: float):
    from prefect.client.orchestration import PrefectClient

    async def read():
        async with PrefectClient(api=env["PREFECT_API_URL"]) as client:
            return await client.read_flow_run(run_id)

    deadline = time.monotonic() + timeout
    run = asyncio.run(read())
    while not run.state.is_final() and time.monotonic() < deadline:
        time.sleep(2)
        run = asyncio.run(read())
    return run


def _triggered_run_trains_the_project(stack_env: dict, triggered, tmp_path: Path) -> None:
    """The retrain the drift event created (still scheduled: the pool is paused) runs on the worker
    after the project file changed: it trains the data and the backbone the file names."""
    import mlflow

    from ml.data.synth import SynthConfig, generate

    data = tmp_path / "team_photos"
    generate(data, SynthConfig(per_class=12, size=64, seed=3), progress=False)
    project = tmp_path / "skinflow.yaml"
    project.write_text(
        f"data: {{source: {data}, size: 24, test_frac: 0.25}}\n"
        "training: {arch: efficientnet_lite0, epochs: 1, lr: 0.01, batch_size: 16}\n"
    )
    _delete(stack_env, _nightly_runs(stack_env))  # the probes' runs: only the triggered retrain is left to run
    _set_project_file(stack_env, project)
    _pool(stack_env, "resume")
    try:
        run = _wait_final(stack_env, triggered.id, 420)
    finally:
        _pool(stack_env, "pause")
        _set_project_file(stack_env, None)
    assert run.state.is_completed(), f"{run.name}: {run.state.type.value} {run.state.message}"
    assert run.name.startswith("retrain-team_photos-efficientnet_lite0"), run.name  # flow, data, recipe
    client = mlflow.MlflowClient(tracking_uri=stack_env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("skinflow-retrain")
    found = client.search_runs([exp.experiment_id], f"tags.prefect_flow_run_id = '{triggered.id}'")
    assert len(found) == 1, "the triggered retrain's MLflow run carries its Prefect flow-run id"
    trained = found[0]
    assert trained.data.params["arch"] == "efficientnet_lite0"
    sources = [d.dataset.source for d in trained.inputs.dataset_inputs]
    assert any(str(data) in s for s in sources), sources
