"""The MLflow model registry: versions of ``skin-lesion-classifier`` and its aliases
(``champion``, ``challenger``)."""

from __future__ import annotations

from collections.abc import Mapping

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

REGISTERED_MODEL = "skin-lesion-classifier"


def register_version(
    model_uri: str, name: str = REGISTERED_MODEL, tags: Mapping[str, str] | None = None
) -> str:
    """Register the logged model at ``model_uri`` (``ModelInfo.model_uri`` as ``log_model``
    returns it: ``models:/<model_id>``) as a new version of ``name`` (created if needed); the
    version records the model's source run. Returns the version."""
    if not model_uri.startswith(("models:/", "runs:/")):
        raise ValueError(f"expected a logged model's URI (models:/<model_id>), got {model_uri!r}")
    version = mlflow.register_model(model_uri, name, tags=dict(tags or {}))
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
