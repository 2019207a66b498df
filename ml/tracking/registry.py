"""The MLflow model registry: versions of ``skin-lesion-classifier`` and its aliases
(``champion``, ``challenger``)."""

from __future__ import annotations

from collections.abc import Mapping

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, RESOURCE_DOES_NOT_EXIST, ErrorCode

from ml.tracking.models import MODEL_DIR

REGISTERED_MODEL = "skin-lesion-classifier"


def _logged_model_id(run_id: str) -> str:
    """Id of the latest logged model named ``model`` in the run."""
    models = mlflow.search_logged_models(
        experiment_ids=[MlflowClient().get_run(run_id).info.experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND name = '{MODEL_DIR}'",
        order_by=[{"field_name": "creation_time", "ascending": False}],
        output_format="list",
    )
    if not models:
        raise ValueError(f"run {run_id} has no logged model named {MODEL_DIR!r}")
    return models[0].model_id


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise


def register_version(
    run_id: str, name: str = REGISTERED_MODEL, tags: Mapping[str, str] | None = None
) -> str:
    """Register the run's logged ``model`` as a new version of ``name``; returns the version."""
    client = MlflowClient()
    _ensure_registered_model(client, name)
    model_id = _logged_model_id(run_id)
    version = client.create_model_version(
        name, source=f"models:/{model_id}", run_id=run_id, tags=dict(tags or {}), model_id=model_id
    )
    return str(version.version)


def set_alias(name: str, alias: str, version: str) -> None:
    """Point ``alias`` (``champion``, ``challenger``) of ``name`` at ``version``."""
    MlflowClient().set_registered_model_alias(name, alias, str(version))


def get_alias_version(name: str, alias: str) -> str | None:
    """Version behind ``name@alias``, or None when the model or alias does not exist."""
    try:
        aliases = MlflowClient().get_registered_model(name).aliases
    except MlflowException as exc:
        if exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return None
        raise
    version = aliases.get(alias)
    return None if version is None else str(version)


def delete_version(name: str, version: str) -> None:
    """Delete one model version (cleans up a partial registration after a failure)."""
    MlflowClient().delete_model_version(name, str(version))
