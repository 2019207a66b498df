"""The one settings object.

Defaults are embedded and need no running service: data under ``./data``, MLflow in
``sqlite:///mlflow.db``, Prefect's ephemeral API, a local Ray, local storage. Environment
variables (prefix ``SKINFLOW_``, plus the tools' own ``MLFLOW_TRACKING_URI``,
``PREFECT_API_URL``, ``RAY_ADDRESS``) and an optional YAML file named by
``SKINFLOW_CONFIG`` switch to servers. Precedence: init kwargs > environment > YAML > defaults.

Secrets (AWS keys) are read by boto3 from the environment itself; they are never fields
here, so they cannot leak into logs or MLflow params through ``Settings.public_dict()``.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict


class _YamlSource(PydanticBaseSettingsSource):
    """Reads the optional YAML file named by ``SKINFLOW_CONFIG``."""

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get("SKINFLOW_CONFIG")
        if not path:
            return {}
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"SKINFLOW_CONFIG points to {p}, which does not exist")
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{p}: expected a mapping of setting names to values")
        return data

    def get_field_value(self, field, field_name):  # pragma: no cover - required by the ABC
        return None, field_name, False


class Settings(BaseSettings):
    """Typed configuration for every layer of skinflow."""

    model_config = SettingsConfigDict(env_prefix="SKINFLOW_", extra="ignore", populate_by_name=True)

    data_root: Path = Path("data")
    """Local root for datasets, caches, reports and run state."""
    storage_root: str | None = None
    """Where artifacts, datasets and reports go: a local path or ``s3://bucket/prefix``.
    Default: ``data_root``; set ``s3_bucket`` to use S3."""
    s3_bucket: str | None = None
    s3_prefix: str = "skinflow"
    s3_endpoint_url: str | None = None
    """For S3-compatible endpoints (MinIO, moto_server). Default: AWS."""
    s3_region: str = "us-east-1"
    s3_max_attempts: int = 5

    mlflow_tracking_uri: str = Field(
        "sqlite:///mlflow.db",
        validation_alias=AliasChoices("mlflow_tracking_uri", "SKINFLOW_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI"),
    )
    prefect_api_url: str | None = Field(
        None, validation_alias=AliasChoices("prefect_api_url", "SKINFLOW_PREFECT_API_URL", "PREFECT_API_URL")
    )
    ray_address: str | None = Field(
        None, validation_alias=AliasChoices("ray_address", "SKINFLOW_RAY_ADDRESS", "RAY_ADDRESS")
    )
    registered_model: str = "skin-lesion-classifier"
    policies_dir: Path = Path(__file__).resolve().parents[1] / "policies"

    @field_validator("s3_prefix")
    @classmethod
    def _strip_prefix(cls, v: str) -> str:
        return v.strip("/")

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        return (init_settings, env_settings, _YamlSource(settings_cls), file_secret_settings)

    @property
    def root_uri(self) -> str:
        """Storage root: ``s3://bucket/prefix`` when a bucket is set, else the local path."""
        if self.storage_root:
            return self.storage_root.rstrip("/")
        if self.s3_bucket:
            return f"s3://{self.s3_bucket}/{self.s3_prefix}".rstrip("/")
        return str(self.data_root)

    def uri(self, *parts: str) -> str:
        """Join ``parts`` under the storage root (``datasets/<name>/<version>``, ``reports/...``)."""
        return "/".join([self.root_uri, *[p.strip("/") for p in parts if p]])

    def public_dict(self) -> dict[str, str]:
        """Settings safe to log (no secrets are fields; URIs with credentials are masked)."""
        out = {}
        for k, v in self.model_dump().items():
            s = "" if v is None else str(v)
            if "@" in s and "://" in s:  # user:password@host
                scheme, rest = s.split("://", 1)
                s = f"{scheme}://***@{rest.split('@', 1)[1]}"
            out[k] = s
        return out


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings (call ``get_settings.cache_clear()`` after changing the environment)."""
    return Settings()
