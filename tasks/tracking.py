"""MLflow tracking and registry helpers used by the Prefect tasks.

Plain functions with no Prefect import: the flows layer adds retries and task decorators.
Names follow ``shared/docs/conventions.md``: metrics ``<split>_<name>`` / ``lr_group_<i>`` /
``epoch_seconds`` logged with ``step=epoch``; artifacts under ``plots/``, ``reports/`` and
``model/``; registry name ``skin-lesion-classifier`` with aliases ``champion``/``challenger``.

Besides the MLflow model flavour, :func:`log_torch_model` stores ``model/state_dict.pt``,
``model/model_meta.json`` and optionally ``model/snapshots.pt`` (a snapshot ensemble) in the
run, because MLflow's default ``pt2`` format loads back as a ``torch.fx`` graph without named
submodules (Grad-CAM and fine-tuning need the real module).
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.models.model import ModelInfo
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, RESOURCE_DOES_NOT_EXIST, ErrorCode

REGISTERED_MODEL = "skin-lesion-classifier"
MODEL_DIR = "model"
STATE_DICT_FILE = "state_dict.pt"
SNAPSHOTS_FILE = "snapshots.pt"
META_FILE = "model_meta.json"
PREDICTIONS_DIR = "predictions"
_SECRET_WORDS = ("password", "passwd", "secret", "token", "key", "credential", "credentials")
_METRIC_NAME = re.compile(r"^(?:(?:train|val|test)_[a-z0-9_]+|lr_group_\d+|epoch_seconds)$")
_URL_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)
_DIGEST_LEN = 36  # width of MLflow's dataset digest column


class ServiceUnavailableError(RuntimeError):
    """A service the flow depends on did not answer."""


def configure_mlflow(tracking_uri: str | None = None) -> str:
    """Point MLflow tracking and registry at ``tracking_uri``; default from the settings
    (``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``). Returns the URI in use."""
    if tracking_uri is None:
        from ml.settings import get_settings

        tracking_uri = get_settings().mlflow_tracking_uri
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    return tracking_uri


def absolute_tracking_uri(uri: str) -> str:
    """``sqlite:///rel.db`` -> ``sqlite:////abs/rel.db`` (Ray trials and workers run elsewhere)."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def check_mlflow_available(uri: str, retries: int = 3, backoff: float = 1.0) -> None:
    """Raise :class:`ServiceUnavailableError` unless an http(s) tracking server answers
    ``GET /health`` within ``retries`` attempts (waits ``backoff * 2**i`` between them).
    Local stores (sqlite, file) need no server and always pass."""
    if not uri.startswith(("http://", "https://")):
        return
    health = uri.rstrip("/") + "/health"
    error: Exception | None = None
    for attempt in range(retries):
        try:
            with urllib.request.urlopen(health, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            error = exc
        if attempt < retries - 1:
            time.sleep(backoff * 2**attempt)
    raise ServiceUnavailableError(
        f"MLflow tracking server at {uri} is unreachable: {error} (after {retries} attempts)"
    )


def _is_secret(key: str) -> bool:
    """Whether a config key names a secret (``aws_secret_access_key``, ``apiKey``, ...)."""
    words = re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key).lower())
    return any(w.endswith(_SECRET_WORDS) for w in words if w)


def redact(d: Mapping[str, Any]) -> dict[str, Any]:
    """Copy of a (nested) config without secret-like keys; credentials in URLs are masked."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        if _is_secret(str(key)):
            continue
        if isinstance(value, Mapping):
            out[key] = redact(value)
        elif isinstance(value, str):
            out[key] = _URL_USERINFO.sub(r"\g<scheme>***@", value)
        else:
            out[key] = value
    return out


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


def log_history(history: Sequence[Mapping[str, float]]) -> None:
    """Log per-epoch metrics with ``step=epoch`` (the entry's ``epoch`` key, else its index).

    Names must follow the conventions (``train_loss``, ``val_macro_f1``, ``lr_group_0``,
    ``epoch_seconds``, ...); non-finite and missing values are skipped.
    """
    for index, entry in enumerate(history):
        step = int(entry.get("epoch", index))
        metrics = {k: float(v) for k, v in entry.items() if k != "epoch" and v is not None}
        bad = sorted(k for k in metrics if not _METRIC_NAME.match(k))
        if bad:
            raise ValueError(f"metric names break the naming convention: {bad}")
        mlflow.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)}, step=step)


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


def log_report_file(path: str | Path) -> str:
    """Log a report file (HTML, JSON) under ``reports/``; returns its artifact path."""
    mlflow.log_artifact(str(path), artifact_path="reports")
    return f"reports/{Path(path).name}"


def log_dataset_input(version: str, name: str, source: str, df_summary: pd.DataFrame) -> None:
    """Record the training dataset (a summary frame, e.g. the manifest) as a run input."""
    dataset = mlflow.data.from_pandas(df_summary, source=source, name=name, digest=version[:_DIGEST_LEN])
    mlflow.log_input(dataset, context="training", tags={"dataset_version": version})


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


def log_torch_model(
    model: torch.nn.Module,
    arch: str,
    classes: Sequence[str],
    input_example: np.ndarray,
    registered_model_name: str | None = None,
    serialization_format: Literal["pt2", "pickle"] = "pt2",
    extra_meta: Mapping[str, Any] | None = None,
    snapshots: Sequence[Mapping[str, torch.Tensor]] = (),
) -> ModelInfo:
    """Log ``model`` as the MLflow pytorch flavour (name ``model``, signature from
    ``input_example``) plus plain artifacts under ``model/``: its weights, the snapshot-ensemble
    weights if any, and ``model_meta.json`` (``arch``, ``classes``, ``num_classes``,
    ``snapshots`` and ``extra_meta`` such as normalisation stats).

    The weights are written by a background thread while the flavour is exported (disk I/O
    beside Python-bound tracing); both are done when this returns."""
    active = mlflow.active_run()
    if active is None:
        raise RuntimeError("log_torch_model logs into the active MLflow run: call it inside mlflow.start_run()")
    meta = model_meta(arch, classes, len(snapshots), extra_meta)
    with model_weights_in_background(active.info.run_id, model.state_dict(), snapshots, meta):
        return log_model_flavour(model, input_example, registered_model_name, serialization_format)


@contextmanager
def model_weights_in_background(
    run_id: str,
    state: Mapping[str, torch.Tensor],
    snapshots: Sequence[Mapping[str, torch.Tensor]],
    meta: Mapping[str, Any],
) -> Iterator[None]:
    """:func:`log_model_weights` on a background thread while the body runs (disk I/O beside the
    caller's Python-bound work); on leaving, waits for it and re-raises a failed upload."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="log-weights") as pool:
        written = pool.submit(log_model_weights, run_id, state, snapshots, meta)
        yield
        written.result()


def model_meta(arch: str, classes: Sequence[str], snapshots: int,
               extra_meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Contents of ``model/model_meta.json``: what rebuilding the real module needs."""
    return {**(extra_meta or {}), "arch": arch, "classes": list(classes), "num_classes": len(classes),
            "snapshots": snapshots}


def log_model_flavour(
    model: torch.nn.Module,
    input_example: np.ndarray,
    registered_model_name: str | None = None,
    serialization_format: Literal["pt2", "pickle"] = "pt2",
) -> ModelInfo:
    """The MLflow pytorch flavour of ``model`` in the active run (signature from the example)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(torch.from_numpy(input_example)).float().numpy()
        return mlflow.pytorch.log_model(
            model,
            name=MODEL_DIR,
            input_example=input_example,
            signature=infer_signature(input_example, output),
            registered_model_name=registered_model_name,
            serialization_format=serialization_format,
            # declared, not inferred: inference re-imports the model in a subprocess (seconds per run)
            pip_requirements=_model_requirements(),
            # MLflow would reload the pt2 file and predict the example in-process (~0.25 s a run)
            # only to log a warning on failure; the round trip is covered by our tests instead.
            # (The pickle format hands extra keywords to torch.save, so only pt2 gets it.)
            **({"validate_serving_input": False} if serialization_format == "pt2" else {}),
        )
    finally:
        model.train(was_training)


def _model_requirements() -> list[str]:
    """Pinned runtime requirements of a logged model (this environment's versions)."""
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("torch", "torchvision", "numpy", "mlflow")]


def _cpu(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in state.items()}


def log_model_weights(
    run_id: str,
    state: Mapping[str, torch.Tensor],
    snapshots: Sequence[Mapping[str, torch.Tensor]],
    meta: Mapping[str, Any],
) -> None:
    """Log CPU weights (``state_dict.pt``, ``snapshots.pt``) and ``model_meta.json`` under the
    run's ``model/`` (client API with an explicit run id: safe from any thread)."""
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(_cpu(state), Path(tmp) / STATE_DICT_FILE)
        if snapshots:
            torch.save([_cpu(s) for s in snapshots], Path(tmp) / SNAPSHOTS_FILE)
        (Path(tmp) / META_FILE).write_text(json.dumps(dict(meta), indent=2))
        MlflowClient().log_artifacts(run_id, tmp, artifact_path=MODEL_DIR)


def log_predictions(split: str, probs: np.ndarray, digest: str) -> str:
    """Store a run's class probabilities on an evaluation set as ``predictions/<split>.npz``,
    keyed by the set's :func:`ml.gate.heldout_digest`, so that a later promotion gate on the
    same held-out data reuses them instead of re-predicting with the stored weights."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{split}.npz"
        np.savez(path, probs=np.asarray(probs, dtype=np.float32), digest=np.array(digest))
        mlflow.log_artifact(str(path), artifact_path=PREDICTIONS_DIR)
    return f"{PREDICTIONS_DIR}/{split}.npz"


def load_predictions(model_uri: str, digest: str) -> np.ndarray | None:
    """Probabilities that the run behind ``model_uri`` stored for the evaluation set with
    ``digest``, or None when it stored none for that set (another split, other data)."""
    run_id = _run_id_of(model_uri)
    client = MlflowClient()
    for item in client.list_artifacts(run_id, PREDICTIONS_DIR):
        if not item.path.endswith(".npz"):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=item.path, dst_path=tmp)
            with np.load(local, allow_pickle=False) as stored:
                if str(stored["digest"]) == digest:
                    return stored["probs"].astype(np.float64)
    return None


def _run_id_of(model_uri: str) -> str:
    """Run id behind ``runs:/<id>/...``, ``models:/<name>/<version>`` or ``models:/<name>@<alias>``."""
    if model_uri.startswith("runs:/"):
        return model_uri.removeprefix("runs:/").split("/", 1)[0]
    if not model_uri.startswith("models:/"):
        raise ValueError(f"expected a runs:/ or models:/ URI, got {model_uri!r}")
    ref = model_uri.removeprefix("models:/").rstrip("/")
    client = MlflowClient()
    if "@" in ref:
        name, alias = ref.split("@", 1)
        version = client.get_model_version_by_alias(name, alias)
    else:
        name, number = ref.rsplit("/", 1)
        version = client.get_model_version(name, number)
    if not version.run_id:
        raise ValueError(f"{model_uri} has no source run holding {MODEL_DIR}/{STATE_DICT_FILE}")
    return version.run_id


def _load_model_file(run_id: str, name: str) -> Any:
    """One file under the run's ``model/``: JSON parsed, weights via ``weights_only=True``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=f"{MODEL_DIR}/{name}", dst_path=tmp
        )
        if name.endswith(".json"):
            return json.loads(Path(path).read_text())
        return torch.load(path, map_location="cpu", weights_only=True)


def load_state_dict_model(model_uri: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state_dict, meta)`` logged by :func:`log_torch_model` for a runs:/ or models:/ URI."""
    run_id = _run_id_of(model_uri)
    return _load_model_file(run_id, STATE_DICT_FILE), _load_model_file(run_id, META_FILE)


def load_model_meta(model_uri: str) -> dict[str, Any]:
    """``model_meta.json`` of a runs:/ or models:/ URI (arch, classes, norm, snapshots, ...)."""
    return _load_model_file(_run_id_of(model_uri), META_FILE)


def load_model_states(model_uri: str) -> tuple[list[dict[str, torch.Tensor]], dict[str, Any]]:
    """``(states, meta)``: the snapshot-ensemble weights, or ``[state_dict]`` without snapshots."""
    run_id = _run_id_of(model_uri)
    meta = _load_model_file(run_id, META_FILE)
    if meta.get("snapshots"):
        return _load_model_file(run_id, SNAPSHOTS_FILE), meta
    return [_load_model_file(run_id, STATE_DICT_FILE)], meta


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
