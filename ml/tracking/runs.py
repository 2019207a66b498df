"""MLflow runs: where tracking points, whether the server answers, params (redacted), per-epoch
metrics, plots, reports, dataset inputs and the conventional tags (``shared/docs/conventions.md``).
Plain functions with no Prefect import: the tasks layer adds retries."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from ml.settings import redact, redact_text

_METRIC_NAME = re.compile(r"^(?:(?:train|val|test)_[a-z0-9_]+|lr_group_\d+|epoch_seconds)$")
_DIGEST_LEN = 36  # width of MLflow's dataset digest column
# The MLflow 3 UI opens an experiment on its runs (not the GenAI overview) when this tag says so
# (its values: ``genai_development``, ``custom_model_development``, ...; see mlflow/server/js).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# The 3.17 UI itself takes the kind from its GenAI / Model training toggle (the URL's
# ``workflowType``, else the browser's last choice, else GenAI), so links to skinflow's runs
# carry ``workflowType=machine_learning`` and a shared view (an experiment tag) that shows the
# dataset and the validation metrics beside the run names.
RUNS_VIEW_KEY = "skinflow"
RUNS_VIEW_TAG = f"mlflow.sharedViewState.{RUNS_VIEW_KEY}"
RUNS_VIEW_COLUMNS = (
    "attributes.`Dataset`",
    "metrics.`val_balanced_accuracy`",
    "metrics.`val_macro_f1`",
    "metrics.`val_loss`",
)
MLFLOW_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves a local store
_DEFAULT_ARCH = "resnet18"
_HEX = re.compile(r"^[0-9a-f]{12,}$")


class ServiceUnavailableError(RuntimeError):
    """A service the flow depends on did not answer."""


def configure_mlflow(tracking_uri: str | None = None) -> str:
    """Point MLflow tracking and registry at ``tracking_uri``; default from the settings
    (``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``). Returns the URI in use.

    MLflow's client prints "View run ... at: <tracking URI>" on stdout when a run on a server
    ends, credentials of the URI included (a print, out of reach of log redaction): that print
    is switched off, and skinflow logs its own redacted runs-page link instead."""
    if tracking_uri is None:
        from ml.settings import get_settings

        tracking_uri = get_settings().mlflow_tracking_uri
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    return tracking_uri


def absolute_tracking_uri(uri: str) -> str:
    """``sqlite:///rel.db`` -> ``sqlite:////abs/rel.db`` (Ray trials and workers run elsewhere)."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


def check_mlflow_available(uri: str, retries: int = 3, backoff: float = 1.0) -> None:
    """Raise :class:`ServiceUnavailableError` unless an http(s) tracking server answers an API
    request (a one-experiment search) within ``retries`` attempts (waits ``backoff * 2**i`` between them).
    Credentials come from the URI (``http://user:pw@host``) or from
    ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``, as for MLflow's own client; a server
    that refuses them fails at once (no retry can fix that). Messages never show the
    credentials. Local stores (sqlite, file) need no server and always pass."""
    import requests

    if not uri.startswith(("http://", "https://")):
        return
    # an API call, not /health: a server with authentication answers /health to anyone
    health = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    auth = (user, password or "") if user else None  # else requests takes them from the URL
    shown = redact_text(uri)
    error: Exception | str | None = None
    for attempt in range(retries):
        try:
            response = requests.get(health, timeout=5, auth=auth)
            if response.status_code in (401, 403):
                raise ServiceUnavailableError(
                    f"MLflow tracking server at {shown} refused the credentials (HTTP {response.status_code}): "
                    "check MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or the user:password in the URI"
                )
            if response.status_code == 200:
                return
            error = f"HTTP {response.status_code}"
        except requests.Timeout:
            error = "no answer within 5 s"
        except requests.ConnectionError:
            error = "connection refused or host unreachable"
        except requests.RequestException as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        if attempt < retries - 1:
            time.sleep(backoff * 2**attempt)
    raise ServiceUnavailableError(
        f"MLflow tracking server at {shown} is unreachable: {redact_text(str(error))} (after {retries} attempts)"
    )


def ensure_experiment(name: str, artifact_location: str | None = None):
    """Get or create the experiment ``name``, tagged as model development
    (:data:`EXPERIMENT_KIND_TAG`; a kind someone set by hand is left alone) and with skinflow's
    runs view (:data:`RUNS_VIEW_TAG`, opened by :func:`runs_page_url`). A new one is created
    with both tags, an existing one gets what it lacks. Returns the experiment."""
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            client.create_experiment(name, artifact_location=artifact_location, tags=_experiment_tags())
        except mlflow.exceptions.MlflowException:  # created concurrently
            pass
        exp = client.get_experiment_by_name(name)
    missing = {
        k: v
        for k, v in _experiment_tags().items()
        if exp.tags.get(k) != v and not (k == EXPERIMENT_KIND_TAG and k in exp.tags)
    }
    for key, value in missing.items():
        client.set_experiment_tag(exp.experiment_id, key, value)
    return client.get_experiment(exp.experiment_id) if missing else exp


def _experiment_tags() -> dict[str, str]:
    view = {"selectedColumns": list(RUNS_VIEW_COLUMNS)}
    return {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND, RUNS_VIEW_TAG: json.dumps(view, separators=(",", ":"))}


def runs_page_url(experiment_id: str, ui: str = MLFLOW_UI) -> str:
    """The page of an experiment's runs in the MLflow UI at ``ui`` (a tracking server, or
    ``mlflow ui`` on a local store): the runs table, not the GenAI overview, with skinflow's
    columns (:func:`ensure_experiment` stores them on the experiment)."""
    return (
        f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs"
        f"?workflowType=machine_learning&viewStateShareKey={RUNS_VIEW_KEY}"
    )


def run_name(flow: str, cfg: Any = None, **parts: Any) -> str:
    """A short run name a person compares at a glance in the MLflow runs table, e.g.
    ``sgdr_dlr_clm lr=0.0123 fp32 s0 [train]`` or ``sgdr lr=0.00456 bf16 s0 #3 [trial]``.

    What differs between runs comes first, because the runs table cuts names after about 22
    characters; the flow, the same for every run of an experiment, comes last in brackets.
    Order: architecture (only when not resnet18, or given), schedule, ``lr=`` (3 significant
    digits; ``lr=auto`` when the LR range test chooses it), precision, ``s<seed>``, the other
    ``parts`` as ``key=value`` in the order given (a hex digest such as a dataset version cut
    to 8 characters), ``#<trial>``, ``[flow]``. ``cfg`` is a
    :class:`ml.train.config.TrainConfig` (or a mapping of its fields); ``parts`` override its
    fields and add others. Precision is ``precision=`` if given (``fp32``/``bf16``/``fp16``),
    else ``fp32`` without AMP and ``amp`` with it. Parts that are None are left out."""
    fields = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else (cfg or {}))
    given = {k: v for k, v in parts.items() if v is not None}
    known = {k: given.pop(k, fields.get(k)) for k in ("arch", "schedule", "lr", "amp", "precision", "seed")}
    trial = given.pop("trial", None)
    words = []
    if known["arch"] and (known["arch"] != _DEFAULT_ARCH or "arch" in parts):
        words.append(str(known["arch"]))
    if known["schedule"]:
        words.append(str(known["schedule"]))
    if "lr" in fields or "lr" in parts:
        words.append(f"lr={known['lr']:.3g}" if known["lr"] is not None else "lr=auto")
    if known["precision"]:
        words.append(str(known["precision"]))
    elif known["amp"] is not None:
        words.append("amp" if known["amp"] else "fp32")
    if known["seed"] is not None:
        words.append(f"s{known['seed']}")
    for key, value in given.items():
        text = str(value)
        words.append(f"{key}={text[:8] if _HEX.match(text) else text}")
    if trial is not None:
        words.append(f"#{trial}")
    words.append(f"[{flow}]")
    return " ".join(words)


def flatten_config(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping -> ``{"a.b.c": "value"}`` with string values (MLflow params)."""
    flat: dict[str, str] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, prefix=f"{name}."))
        else:
            flat[name] = str(value)
    return flat


def log_params(config: Mapping[str, Any]) -> dict[str, str]:
    """Log the full flattened config, secrets removed, as params; returns what was logged."""
    params = flatten_config(redact(config))
    mlflow.log_params(params)
    return params


def epoch_metrics(row: Mapping[str, float | None]) -> dict[str, float]:
    """One epoch's history row as MLflow metrics: the ``epoch`` key and missing or non-finite
    values left out. Names must follow the conventions (``train_loss``, ``val_macro_f1``,
    ``lr_group_0``, ``epoch_seconds``, ...): anything else raises before it reaches the store."""
    metrics = {k: float(v) for k, v in row.items() if k != "epoch" and v is not None}
    bad = sorted(k for k in metrics if not _METRIC_NAME.match(k))
    if bad:
        raise ValueError(f"metric names break the naming convention: {bad}")
    return {k: v for k, v in metrics.items() if math.isfinite(v)}


def log_plots(paths: Iterable[str | Path]) -> list[str]:
    """Log image files under ``plots/``; returns their artifact paths."""
    logged = []
    for path in paths:
        mlflow.log_artifact(str(path), artifact_path="plots")
        logged.append(f"plots/{Path(path).name}")
    return logged


def log_report_json(name: str, report: Mapping[str, Any]) -> str:
    """Log a JSON report as ``reports/<name>.json``; returns its artifact path."""
    artifact = f"reports/{name}.json"
    mlflow.log_dict(dict(report), artifact)
    return artifact


def log_dataset_input(version: str, name: str, source: str, df_summary: pd.DataFrame) -> None:
    """Record the training dataset (a summary frame, e.g. the manifest) as a run input.

    Runs that start together (Tune trials) may all create the experiment's dataset entry at
    once; on a SQL store the losers hit its unique constraint. The entry then exists, and the
    second attempt links to it."""
    from mlflow.exceptions import MlflowException

    dataset = mlflow.data.from_pandas(df_summary, source=source, name=name, digest=version[:_DIGEST_LEN])
    for attempt in range(3):
        try:
            mlflow.log_input(dataset, context="training", tags={"dataset_version": version})
            return
        except MlflowException as exc:
            if "UNIQUE constraint" not in str(exc) and "IntegrityError" not in str(exc) or attempt == 2:
                raise
            time.sleep(0.2 * (attempt + 1))


def set_standard_tags(
    dataset_version: str, git_commit: str | None, schedule: str, amp: bool | str, device: str
) -> dict[str, str]:
    """Set the conventional run tags; a missing git commit is tagged ``unknown``."""
    tags = {
        "dataset_version": dataset_version,
        "git_commit": git_commit or "unknown",
        "schedule": schedule,
        "amp": str(amp),
        "device": device,
    }
    mlflow.set_tags(tags)
    return tags


def git_commit(repo: str | Path | None = None) -> str | None:
    """HEAD commit of the checkout holding ``repo`` (default: this package), or None."""
    cwd = Path(repo) if repo else Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
