"""MLflow runs: where tracking points, whether the server answers, a run's lifecycle (create,
terminate, supersede, system metrics while it trains), params (redacted), per-epoch metrics,
plots, reports, dataset inputs, evaluation metrics linked to a logged model and the conventional
tags (``shared/docs/conventions.md``). Plain functions with no Prefect import: the tasks layer
adds retries."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import pandas as pd
from mlflow import MlflowClient

from ml.settings import redact, redact_text

if TYPE_CHECKING:
    from mlflow.data.pandas_dataset import PandasDataset

_METRIC_NAME = re.compile(r"^(?:(?:train|val|test)_[a-z0-9_]+|lr_group_\d+|epoch_seconds)$")
_DIGEST_LEN = 36  # width of MLflow's dataset digest column
_METRICS_PER_BATCH = 1000  # MLflow's limit of metrics per log_batch
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
# Architectures' names as run names show them (:func:`short_arch`); others are shown as they are.
SHORT_ARCHS = {
    "efficientnet_lite0": "lite0",
    "efficientnet_lite1": "lite1",
    "efficientnet_lite2": "lite2",
    "resnext50_32x4d": "resnext50",
    "resnext101_32x8d": "resnext101",
}
_HEX = re.compile(r"^[0-9a-f]{12,}$")
# System metrics of training runs (``system/cpu_utilization_percentage``, memory, disk, network,
# GPU where there is one): one sample every 5 s, not MLflow's default 10 s, so that a run of a
# minute gets a curve; a run shorter than one interval gets none.
SYSTEM_METRICS_INTERVAL_S = 5.0
_SYSTEM_METRICS_INTERVAL_ENV = "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"
# The evaluation metrics' dataset context, by split (the training input's context is "training").
EVAL_CONTEXTS = {"val": "validation", "test": "testing"}
_log = logging.getLogger(__name__)


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


def run_page_url(experiment_id: str, run_id: str, ui: str = MLFLOW_UI) -> str:
    """The page of one run in the MLflow UI at ``ui`` (its metrics, params, plots and model)."""
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def create_run(
    experiment_id: str, run_name: str, parent_run_id: str | None = None, tags: Mapping[str, str] | None = None
) -> str:
    """Create a RUNNING run named ``run_name`` in ``experiment_id`` (a child of ``parent_run_id``
    when given) with ``tags``; returns its id. Client API: the run is no thread's active run."""
    all_tags = {"mlflow.runName": run_name, **(tags or {})}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    return MlflowClient().create_run(experiment_id, tags=all_tags, run_name=run_name).info.run_id


def terminate_run(run_id: str, status: str = "FINISHED") -> None:
    """End run ``run_id`` with ``status`` (``FINISHED``, ``FAILED``, ``KILLED``), from any thread."""
    MlflowClient().set_terminated(run_id, status)


def supersede_run(previous: str, run_id: str) -> None:
    """Run ``previous`` (its process died while it was RUNNING) is replaced by ``run_id``: it is
    tagged ``superseded_by`` and ended KILLED, and ``run_id`` is tagged ``resumed_from_run``."""
    client = MlflowClient()
    client.set_tag(previous, "superseded_by", run_id)
    client.set_terminated(previous, "KILLED")
    client.set_tag(run_id, "resumed_from_run", previous)


def system_metrics_enabled(interval_s: float | None = None) -> bool:
    """Whether training runs log system metrics, with MLflow's sampling interval set for the runs
    started from now on in this process: ``interval_s``, else ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL``
    when set, else :data:`SYSTEM_METRICS_INTERVAL_S`. On unless MLflow's own switch
    ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING`` is set to false (it is a per-process opt-out here:
    skinflow turns them on for its training runs only, not for every run)."""
    if os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "").strip().lower() in ("false", "0"):
        return False
    if interval_s is not None or not os.environ.get(_SYSTEM_METRICS_INTERVAL_ENV):
        mlflow.set_system_metrics_sampling_interval(interval_s or SYSTEM_METRICS_INTERVAL_S)
    return True


@contextmanager
def system_metrics(run_id: str, interval_s: float | None = None) -> Iterator[None]:
    """Sample system metrics (``system/cpu_utilization_percentage``, ``system/system_memory_usage_megabytes``,
    disk, network, GPU where there is one) into run ``run_id`` while the block runs, one sample
    every ``interval_s`` (see :func:`system_metrics_enabled`; a block shorter than one interval
    logs none).

    Through MLflow's public API, ``mlflow.start_run(run_id=..., log_system_metrics=True)``, which
    ties the monitor to a thread's active run: a helper thread holds that active run, so the
    caller's thread (and code in it that starts the same run, e.g. to log a model) is unaffected.
    On leaving, the helper ends its active run (stopping the monitor and flushing its samples)
    with the block's status: FINISHED, FAILED when the block raises, KILLED on Ctrl-C; the run's
    owner terminates it too. MLflow also stops the monitor when the run stops RUNNING or when
    any thread ends that run with ``mlflow.end_run``. Failures to start or stop it are logged,
    never raised: system metrics never fail a training run."""
    if not system_metrics_enabled(interval_s):
        yield
        return
    sampler = _SystemMetricsSampler(run_id)
    sampler.start()
    status = "FINISHED"
    try:
        yield
    except BaseException as exc:
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        raise
    finally:
        sampler.stop(status)


class _SystemMetricsSampler:
    """A thread whose active MLflow run is ``run_id``, started with system metrics on."""

    def __init__(self, run_id: str, stop_timeout_s: float = 60.0):
        self.run_id = run_id
        self.stop_timeout_s = stop_timeout_s
        self._started, self._stopping = threading.Event(), threading.Event()
        self._status = "FINISHED"
        self._thread = threading.Thread(target=self._hold, name=f"system-metrics-{run_id[:8]}", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._started.wait(self.stop_timeout_s)

    def stop(self, status: str) -> None:
        self._status = status
        self._stopping.set()
        self._thread.join(self.stop_timeout_s)

    def _hold(self) -> None:
        try:
            mlflow.start_run(run_id=self.run_id, log_system_metrics=True)
        except Exception as exc:
            _log.warning("no system metrics for MLflow run %s: %s", self.run_id, exc)
            return
        finally:
            self._started.set()
        self._stopping.wait()
        try:
            mlflow.end_run(self._status)
        except Exception as exc:
            _log.warning("could not stop the system metrics of MLflow run %s: %s", self.run_id, exc)


def short_arch(arch: str) -> str:
    """An architecture's name as run names show it: :data:`SHORT_ARCHS` (``efficientnet_lite0`` ->
    ``lite0``, ``resnext50_32x4d`` -> ``resnext50``); any other name (``resnet18``,
    ``densenet121``) as it is."""
    return SHORT_ARCHS.get(arch, arch)


def run_name(flow: str, cfg: Any = None, **parts: Any) -> str:
    """A short run name a person compares at a glance in the MLflow runs table, e.g.
    ``sgdr_dlr_clm lr=0.0123 fp32 s0 [train]`` or ``sgdr lr=0.00456 bf16 s0 #3 lite0 [trial]``.

    What differs between runs comes first, because the runs table cuts names after about 22
    characters: schedule, LR and precision, the settings a sweep varies and a person compares;
    the architecture, which a sweep often shares between all its trials, and the flow, the same
    for every run of an experiment, come last.
    Order: schedule, ``lr=`` (3 significant digits; ``lr=auto`` when the LR range test chooses
    it), precision, ``s<seed>``, the other ``parts`` as ``key=value`` in the order given (a hex
    digest such as a dataset version cut to 8 characters), ``#<trial>``, the architecture (only
    when not resnet18, or given; shortened by :func:`short_arch`), ``[flow]``. ``cfg`` is a
    :class:`ml.train.config.TrainConfig` (or a mapping of its fields); ``parts`` override its
    fields and add others. Precision is ``precision=`` if given (``fp32``/``bf16``/``fp16``),
    else ``fp32`` without AMP and ``amp`` with it. Parts that are None are left out."""
    fields = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else (cfg or {}))
    given = {k: v for k, v in parts.items() if v is not None}
    known = {k: given.pop(k, fields.get(k)) for k in ("arch", "schedule", "lr", "amp", "precision", "seed")}
    trial = given.pop("trial", None)
    words = []
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
    if known["arch"] and (known["arch"] != _DEFAULT_ARCH or "arch" in parts):
        words.append(short_arch(str(known["arch"])))
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


def dataset_of(digest: str, name: str, source: str, df_summary: pd.DataFrame) -> PandasDataset:
    """An ``mlflow.data`` dataset of a summary frame (e.g. manifest rows) named ``name`` with
    ``digest`` (cut to the width of MLflow's digest column) as its identity."""
    return mlflow.data.from_pandas(df_summary, source=source, name=name, digest=digest[:_DIGEST_LEN])


def log_dataset_input(version: str, name: str, source: str, df_summary: pd.DataFrame) -> PandasDataset:
    """Record the training dataset (a summary frame, e.g. the manifest) as a run input of the
    active run (context ``training``, tag ``dataset_version``); returns the dataset."""
    dataset = dataset_of(version, name, source, df_summary)
    _log_input(dataset, "training", {"dataset_version": version})
    return dataset


def log_evaluation_dataset(
    split: str, digest: str, source: str, df_summary: pd.DataFrame, dataset_version: str, name: str = "dataset"
) -> PandasDataset:
    """Record the split a model was evaluated on as a run input of the active run, named
    ``<name>-<split>`` with the evaluation set's ``digest`` (:func:`ml.eval.gate.heldout_digest`,
    the key of the run's stored predictions), context ``testing`` or ``validation``
    (:data:`EVAL_CONTEXTS`) and tags ``dataset_version``, ``split``; returns the dataset, the
    ``dataset`` of :func:`log_evaluation_metrics`."""
    dataset = dataset_of(digest, f"{name}-{split}", source, df_summary)
    _log_input(dataset, EVAL_CONTEXTS.get(split, split), {"dataset_version": dataset_version, "split": split})
    return dataset


def _log_input(dataset: PandasDataset, context: str, tags: Mapping[str, str]) -> None:
    """``mlflow.log_input`` into the active run.

    Runs that start together (Tune trials) may all create the experiment's dataset entry at
    once; on a SQL store the losers hit its unique constraint. The entry then exists, and the
    second attempt links to it."""
    from mlflow.exceptions import MlflowException

    for attempt in range(3):
        try:
            mlflow.log_input(dataset, context=context, tags=dict(tags))
            return
        except MlflowException as exc:
            if "UNIQUE constraint" not in str(exc) and "IntegrityError" not in str(exc) or attempt == 2:
                raise
            time.sleep(0.2 * (attempt + 1))


def log_evaluation_metrics(metrics: Mapping[str, float], model_id: str, dataset: PandasDataset) -> dict[str, float]:
    """Log a model's evaluation metrics into the active run, linked to the logged model
    ``model_id`` (they show on its LoggedModel page, ``mlflow.get_logged_model(model_id).metrics``)
    and to the evaluated ``dataset`` (:func:`log_evaluation_dataset`). Log the model first: MLflow
    links the metrics of the run's step 0 to a model logged after them, without their dataset.
    Returns what was logged."""
    logged = {k: float(v) for k, v in metrics.items()}
    mlflow.log_metrics(logged, model_id=model_id, dataset=dataset)
    return logged


def log_validation_report(run_id: str, report: Mapping[str, Any], docs_dir: str | Path | None, source: str) -> None:
    """A validation run's record: param ``source``, metrics ``critical_failures`` and
    ``warnings``, tag ``validation_passed``, ``reports/validation.json``, the GX Data Docs site
    under ``reports/data_docs`` (when built), the summary HTML (when any) and, when files were
    quarantined (``report["quarantine"]``), :func:`log_quarantine`'s record."""
    client = MlflowClient()
    client.log_param(run_id, "source", source)
    client.log_metric(run_id, "critical_failures", len(report["critical_failures"]))
    client.log_metric(run_id, "warnings", len(report["warnings"]))
    client.set_tag(run_id, "validation_passed", str(report["passed"]))
    client.log_dict(run_id, dict(report), "reports/validation.json")
    if docs_dir is not None and Path(docs_dir).is_dir():
        client.log_artifacts(run_id, str(docs_dir), artifact_path="reports/data_docs")
    if report.get("summary_html"):
        client.log_artifact(run_id, report["summary_html"], artifact_path="reports")
    if report.get("quarantine"):
        log_quarantine(run_id, report["quarantine"])


def log_quarantine(run_id: str, quarantine: Mapping[str, Any]) -> None:
    """The files a validation quarantined (:meth:`ml.quality.quarantine.Quarantine.summary`) on run
    ``run_id``: param ``quarantined_files`` (how many), tags ``parent_dataset_version`` (the version
    they were set aside from) and ``quarantine`` (the one-line summary), and the list itself as the
    artifact ``quarantine.csv`` (path, label, split, reason, group, note)."""
    client = MlflowClient()
    client.log_param(run_id, "quarantined_files", int(quarantine["files"]))
    client.set_tag(run_id, "parent_dataset_version", quarantine["parent_dataset_version"])
    client.set_tag(run_id, "quarantine", quarantine["summary"])
    client.log_artifact(run_id, quarantine["csv"])


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


def set_run_tags(run_id: str, tags: Mapping[str, Any]) -> dict[str, str]:
    """Tag run ``run_id`` (client API: any run, from any thread) with ``tags`` as strings;
    returns what was set."""
    client = MlflowClient()
    values = {k: str(v) for k, v in tags.items()}
    for key, value in values.items():
        client.set_tag(run_id, key, value)
    return values


def log_run_params(run_id: str, params: Mapping[str, Any], max_chars: int | None = None) -> dict[str, str]:
    """Log ``params`` as strings (each cut to ``max_chars`` when given) into run ``run_id``
    (client API); returns what was logged."""
    client = MlflowClient()
    values = {k: str(v)[:max_chars] if max_chars else str(v) for k, v in params.items()}
    for key, value in values.items():
        client.log_param(run_id, key, value)
    return values


def log_run_metrics(
    run_id: str, metrics: Mapping[str, float], step: int = 0, timestamp_ms: int | None = None
) -> dict[str, float]:
    """Log ``metrics`` (as floats) at ``step`` into run ``run_id`` (client API), in batches of
    MLflow's limit; ``timestamp_ms`` default now. Returns what was logged."""
    from mlflow.entities import Metric

    values = {k: float(v) for k, v in metrics.items()}
    now = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    rows = [Metric(k, v, now, step) for k, v in values.items()]
    client = MlflowClient()
    for start in range(0, len(rows), _METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=rows[start : start + _METRICS_PER_BATCH])
    return values


def log_metric_history(
    run_id: str, rows: Iterable[Mapping[str, Any]], keys: Iterable[str], step_key: str, prefix: str = ""
) -> int:
    """Curves from a history (one mapping per step, e.g. a GAN's per-iteration losses): metric
    ``<prefix><key>`` of each of ``keys`` at step ``row[step_key]``, logged into run ``run_id``
    in batches of MLflow's limit. Returns the number of points logged."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    keys = list(keys)
    curve = [Metric(f"{prefix}{k}", float(row[k]), now, int(row[step_key])) for row in rows for k in keys]
    client = MlflowClient()
    for start in range(0, len(curve), _METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=curve[start : start + _METRICS_PER_BATCH])
    return len(curve)


def log_run_artifact(run_id: str, path: str | Path, artifact_path: str | None = None) -> str:
    """Log one file into run ``run_id`` (client API) under ``artifact_path``; returns its
    artifact path."""
    MlflowClient().log_artifact(run_id, str(path), artifact_path=artifact_path)
    return f"{artifact_path}/{Path(path).name}" if artifact_path else Path(path).name


def log_files(paths: Iterable[str | Path], artifact_path: str) -> list[str]:
    """Log files into the active run under ``artifact_path`` (e.g. ``plots/gan``); returns their
    artifact paths (:func:`log_plots` is this under ``plots``)."""
    logged = []
    for path in paths:
        mlflow.log_artifact(str(path), artifact_path=artifact_path)
        logged.append(f"{artifact_path}/{Path(path).name}")
    return logged


def log_table_json(rows: Sequence[Mapping[str, Any]], artifact_file: str) -> str:
    """Log ``rows`` (mappings with the same keys, the first row's order) into the active run as an
    MLflow table ``artifact_file`` (e.g. ``reports/estimates.json``: the UI shows it as a
    table); returns its artifact path."""
    mlflow.log_table({k: [r[k] for r in rows] for k in rows[0]}, artifact_file)
    return artifact_file


def log_run_report(
    run_id: str,
    name: str,
    report: Mapping[str, Any],
    plots: Iterable[str | Path] = (),
    metrics: Mapping[str, float] | None = None,
) -> list[str]:
    """A study's findings in run ``run_id``: ``plots`` under ``plots/``, ``report`` as
    ``reports/<name>.json`` and ``metrics``. Through ``mlflow.start_run(run_id=...)``, left
    FINISHED when done (its owner may end it again). Returns the plots' artifact paths."""
    with mlflow.start_run(run_id=run_id):
        logged = log_plots(plots)
        log_report_json(name, report)
        if metrics:
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
    return logged


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
