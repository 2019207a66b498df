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

import difflib
import logging
import os
import re
import traceback
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict


def _setting_names(cls) -> set[str]:
    """The names a settings file may use: each field's name and its aliases."""
    names = set()
    for name, info in cls.model_fields.items():
        names.add(name)
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(a for a in alias.choices if isinstance(a, str))
        elif isinstance(alias, str):
            names.add(alias)
    return names


class _YamlSource(PydanticBaseSettingsSource):
    """Reads the optional YAML file named by ``SKINFLOW_CONFIG``."""

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get("SKINFLOW_CONFIG")
        if not path:
            return {}
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"SKINFLOW_CONFIG points to {p}, which does not exist")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}: " if mark is not None else ""
            problem = getattr(exc, "problem", None) or type(exc).__name__
            raise ValueError(f"{p} (SKINFLOW_CONFIG): {where}not valid YAML ({problem})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{p} (SKINFLOW_CONFIG): expected a mapping of setting names to values")
        known = _setting_names(self.settings_cls)
        unknown = [str(k) for k in data if str(k) not in known]
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, sorted(known), n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ValueError(f"{p} (SKINFLOW_CONFIG): unknown setting {', '.join(hints)}")
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
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):
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
        return {k: redact_text("" if v is None else str(v)) for k, v in self.model_dump().items()}


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings (call ``get_settings.cache_clear()`` after changing the environment)."""
    return Settings()


# --- the one redaction ----------------------------------------------------------------------
# Every message, log line, MLflow param, artifact and Prefect parameter that could carry a
# secret goes through these: credentials in URLs (``scheme://user:pw@host``) and the values
# of secret-named environment variables (``AWS_SECRET_ACCESS_KEY``, ``MLFLOW_TRACKING_PASSWORD``,
# ``*_TOKEN``, ...) are replaced by ``***``.

_SECRET_WORDS = ("password", "passwd", "secret", "token", "key", "credential", "credentials")
_SECRET_SHORT = ("pw",)  # whole words only ("PWD" is the working directory)
# the user info runs to the LAST "@" of the authority (a password may contain "@")
_URL_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/?#\s]*@", re.IGNORECASE)
_MIN_SECRET_LEN = 5  # shorter values ("1", "on") would mask ordinary text


def is_secret_name(key: str) -> bool:
    """Whether a config key or variable names a secret (``aws_secret_access_key``, ``apiKey``)."""
    words = re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key).lower())
    return any(w.endswith(_SECRET_WORDS) or w in _SECRET_SHORT for w in words if w)


def _secret_values() -> list[str]:
    values = {v for k, v in os.environ.items() if is_secret_name(k) and len(v) >= _MIN_SECRET_LEN}
    return sorted(values, key=len, reverse=True)


def redact_text(text: str) -> str:
    """``text`` with URL credentials masked and secret environment values replaced by ``***``."""
    out = _URL_USERINFO.sub(r"\g<scheme>***@", text)
    for value in _secret_values():
        out = out.replace(value, "***")
    return out


def without_credentials(url: str) -> str:
    """``url`` without its user info (``http://user:pw@host:5000/x`` -> ``http://host:5000/x``): a
    link that can be shown or stored (a Prefect artifact), where the credentials stay in the
    environment."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def redact(d: Mapping[str, Any]) -> dict[str, Any]:
    """Copy of a (nested) mapping without secret-named keys; strings through :func:`redact_text`."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        if is_secret_name(str(key)):
            continue
        if isinstance(value, Mapping):
            out[key] = redact(value)
        elif isinstance(value, str):
            out[key] = redact_text(value)
        else:
            out[key] = value
    return out


class _RedactingRecordFactory:
    def __init__(self, base: Callable[..., logging.LogRecord]) -> None:
        self.base = base

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self.base(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:
            return record
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = redact_text("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
        return record


def install_log_redaction() -> None:
    """Redact every log record this process creates (console, files, Prefect's API handler
    that stores logs in its database): idempotent."""
    factory = logging.getLogRecordFactory()
    if not isinstance(factory, _RedactingRecordFactory):
        logging.setLogRecordFactory(_RedactingRecordFactory(factory))
