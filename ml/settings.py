"""The one settings object.

Defaults are embedded and need no running service: data under ``./data``, MLflow in
``sqlite:///mlflow.db``, Prefect's ephemeral API, a local Ray, local storage. Environment
variables (prefix ``SKINFLOW_``, plus the tools' own ``MLFLOW_TRACKING_URI``,
``PREFECT_API_URL``, ``RAY_ADDRESS``) and an optional YAML file named by
``SKINFLOW_CONFIG`` switch to servers; the project file (ml/project.py) may name
``registered_model`` and ``policies_dir``. Precedence: init kwargs > environment > YAML >
project file > defaults.

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


def yaml_problem(exc: yaml.YAMLError) -> str:
    """``line <n>: not valid YAML (<problem>[, <context> that starts on line <m>])``: the one way a
    YAML mistake in any of skinflow's files (settings, project, policies) is told."""
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}: " if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and context_mark is not None and (mark is None or context_mark.line != mark.line):
        problem = f"{problem}, {context} that starts on line {context_mark.line + 1}"
    return f"{where}not valid YAML ({problem})"


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
            raise ValueError(f"{p} (SKINFLOW_CONFIG): {yaml_problem(exc)}") from None
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


# --- the project file (read and checked by ml/project.py; its settings keys are read here) ----
PROJECT_FILE = "skinflow.yaml"
PROJECT_ENV = "SKINFLOW_PROJECT_FILE"
PROJECT_SETTING_KEYS = ("registered_model", "policies_dir")


class ProjectError(ValueError):
    """The project file is wrong (a user's mistake): one line naming the file and the key."""


def project_path() -> tuple[Path, bool]:
    """The project file's path and whether it was named explicitly (``SKINFLOW_PROJECT_FILE``)."""
    named = os.environ.get(PROJECT_ENV)
    return (Path(named), True) if named else (Path(PROJECT_FILE), False)


def read_project_yaml(path: Path) -> dict[str, Any]:
    """The project file's mapping; a one-line :class:`ProjectError` for unreadable or malformed YAML."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ProjectError(f"{path}: the project file cannot be read ({exc.strerror or exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ProjectError(f"{path}: {yaml_problem(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ProjectError(f"{path}: the project file must be a mapping of sections, got {type(data).__name__}")
    return data


class _ProjectSource(PydanticBaseSettingsSource):
    """The settings a project file names (``registered_model``, ``policies_dir``), below the
    environment and ``SKINFLOW_CONFIG``; the rest of the file is ml/project.py's."""

    def __call__(self) -> dict[str, Any]:
        path, _ = project_path()
        if not path.is_file():
            return {}  # a named file that is missing is ml.project.load_project's error
        values = read_project_yaml(path)
        return {k: values[k] for k in PROJECT_SETTING_KEYS if values.get(k) is not None}

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
    io_retry_delays: list[float] = Field(default_factory=lambda: [2.0, 5.0, 10.0])
    """Seconds between a task's retries of an S3 or MLflow call that failed for a transient
    reason (``SKINFLOW_IO_RETRY_DELAYS='[2, 5, 10]'``): one retry per entry, ``[]`` for none."""

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
    project_file: Path = Path(PROJECT_FILE)
    """The project file (ml/project.py) that every verb, the demo and every deployment read
    (``SKINFLOW_PROJECT_FILE``)."""
    policies_dir: Path = Path(__file__).resolve().parents[1] / "policies"

    @field_validator("io_retry_delays")
    @classmethod
    def _non_negative(cls, v: list[float]) -> list[float]:
        if any(d < 0 for d in v):
            raise ValueError(f"io_retry_delays are seconds to wait, none negative: {v}")
        return v

    @field_validator("s3_prefix")
    @classmethod
    def _strip_prefix(cls, v: str) -> str:
        return v.strip("/")

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):
        return (
            init_settings,
            env_settings,
            _YamlSource(settings_cls),
            _ProjectSource(settings_cls),
            file_secret_settings,
        )

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
