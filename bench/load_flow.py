"""The short flow of the load benchmark (bench/bench_load.py, tests/integration/test_load.py):
one task that records one MLflow run tagged with the flow run's id, so a lost or duplicated
execution shows in MLflow as well as in Prefect. Deployed from bench/load.prefect.yaml (a
benchmark's deployment, not one of skinflow's: it stays out of prefect.yaml)."""

from __future__ import annotations

from prefect import flow, runtime, task


@task(name="load-record")
def record(i: int, experiment_id: str) -> str:
    from mlflow import MlflowClient

    client = MlflowClient()  # MLFLOW_TRACKING_URI: the worker's environment (the stack's MLflow server)
    run = client.create_run(experiment_id, tags={"flow_run_id": str(runtime.flow_run.id), "load_index": str(i)})
    client.set_terminated(run.info.run_id)
    return run.info.run_id


@flow(name="load-probe")
def load_probe(i: int, experiment_id: str) -> str:
    return record(i, experiment_id)
