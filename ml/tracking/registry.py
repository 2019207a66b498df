"""The MLflow model registry: versions of ``skin-lesion-classifier`` and its aliases
(``champion``, ``challenger``)."""

from __future__ import annotations

from collections.abc import Mapping

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

REGISTERED_MODEL = "skin-lesion-classifier"


def register_version(model_uri: str, name: str = REGISTERED_MODEL, tags: Mapping[str, str] | None = None) -> str:
    """Register the logged model at ``model_uri`` (``ModelInfo.model_uri`` as ``log_model``
    returns it: ``models:/<model_id>``) as a new version of ``name`` (created if needed); the
    version records the model's source run. Returns the version."""
    if not model_uri.startswith(("models:/", "runs:/")):
        raise ValueError(f"expected a logged model's URI (models:/<model_id>), got {model_uri!r}")
    # Idempotent: registering the same logged model again returns its version. A create whose
    # answer was lost (the server died after committing it; the client, or a task retry, sent it
    # again) leaves one version, not two.
    existing = versions_of(model_uri, name)
    if not existing:
        created = str(mlflow.register_model(model_uri, name, tags=dict(tags or {})).version)
        existing = versions_of(model_uri, name) or [created]
    keep, *extra = existing
    for version in extra:
        delete_version(name, version)
    return keep


def versions_of(model_uri: str, name: str = REGISTERED_MODEL) -> list[str]:
    """The versions of ``name`` registered from the logged model ``model_uri``, oldest first."""
    try:
        found = MlflowClient().search_model_versions(f"name = '{name}'")
    except MlflowException as exc:
        if exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return []
        raise
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/") else None
    same = [mv for mv in found if mv.source == model_uri or (model_id and getattr(mv, "model_id", None) == model_id)]
    return [str(v) for v in sorted(int(mv.version) for mv in same)]


def set_alias(name: str, alias: str, version: str) -> None:
    """Point ``alias`` (``champion``, ``challenger``) of ``name`` at ``version``."""
    MlflowClient().set_registered_model_alias(name, alias, str(version))


def tag_version(name: str, version: str, tags: Mapping[str, str]) -> None:
    """Set ``tags`` on one version of ``name`` (e.g. the promotion gate's ``gate_decision``)."""
    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)


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
