"""Models in MLflow runs: the plain artifacts that rebuild the real module
(``model/state_dict.pt``, ``model/snapshots.pt``, ``model/model_meta.json``), stored held-out
predictions, and loading them back; the pytorch flavour of a single module.

The model a training run logs and registers is the served pyfunc of :mod:`ml.tracking.serving`
(the snapshot ensemble with its preprocessing). Grad-CAM, embeddings and fine-tuning need the
real module: they rebuild it from the run's state dicts (MLflow's default ``pt2`` format loads
back as a ``torch.fx`` graph without named submodules).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import mlflow
import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.models import infer_signature
from mlflow.models.model import ModelInfo

from ml.train.checkpoint import cpu_state
from ml.train.models import WeightsNotFoundError

MODEL_DIR = "model"
STATE_DICT_FILE = "state_dict.pt"
SNAPSHOTS_FILE = "snapshots.pt"
META_FILE = "model_meta.json"
PREDICTIONS_DIR = "predictions"
TRAIN_DIGESTS_FILE = "reports/train_digests.json"
TRAINED_SPLITS = ("train", "val")  # both seen while training (val: early stopping, selection)
WEIGHTS, META = "weights", "meta"  # keys of write_model_files' result: the served model's artifacts


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
) -> Iterator[Callable[[], dict[str, str]]]:
    """:func:`log_model_weights` on a background thread while the body runs (disk I/O beside the
    caller's Python-bound work); on leaving, waits for it and re-raises a failed upload.

    Yields ``written()``: waits until the files are written locally and returns what
    :func:`write_model_files` returns (paths valid inside the block, e.g. the served model's
    artifacts)."""
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(1, thread_name_prefix="log-weights") as pool:
        written = pool.submit(write_model_files, Path(tmp), state, snapshots, meta)
        uploaded = pool.submit(_upload_when_written, written, run_id, tmp)
        yield written.result
        uploaded.result()


def _upload_when_written(written: Future, run_id: str, folder: str) -> None:
    written.result()  # a failed write fails the upload too
    MlflowClient().log_artifacts(run_id, folder, artifact_path=MODEL_DIR)


def model_meta(
    arch: str, classes: Sequence[str], snapshots: int, extra_meta: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Contents of ``model/model_meta.json``: what rebuilding the real module needs."""
    return {
        **(extra_meta or {}),
        "arch": arch,
        "classes": list(classes),
        "num_classes": len(classes),
        "snapshots": snapshots,
    }


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


def _model_requirements(extra: Sequence[str] = ()) -> list[str]:
    """Pinned runtime requirements of a logged model (this environment's versions)."""
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("torch", "torchvision", "numpy", "mlflow", *extra)]


def log_model_weights(
    run_id: str,
    state: Mapping[str, torch.Tensor],
    snapshots: Sequence[Mapping[str, torch.Tensor]],
    meta: Mapping[str, Any],
) -> None:
    """Log CPU weights (``state_dict.pt``, ``snapshots.pt``) and ``model_meta.json`` under the
    run's ``model/`` (client API with an explicit run id: safe from any thread)."""
    with tempfile.TemporaryDirectory() as tmp:
        write_model_files(Path(tmp), state, snapshots, meta)
        MlflowClient().log_artifacts(run_id, tmp, artifact_path=MODEL_DIR)


def write_model_files(
    folder: Path,
    state: Mapping[str, torch.Tensor],
    snapshots: Sequence[Mapping[str, torch.Tensor]],
    meta: Mapping[str, Any],
) -> dict[str, str]:
    """Write ``state_dict.pt``, ``snapshots.pt`` (if any) and ``model_meta.json`` into ``folder``;
    returns the served model's files: ``weights`` (the snapshots, else the state dict) and ``meta``."""
    torch.save(cpu_state(state), folder / STATE_DICT_FILE)
    if snapshots:
        torch.save([cpu_state(s) for s in snapshots], folder / SNAPSHOTS_FILE)
    (folder / META_FILE).write_text(json.dumps(dict(meta), indent=2))
    return {WEIGHTS: str(folder / (SNAPSHOTS_FILE if snapshots else STATE_DICT_FILE)), META: str(folder / META_FILE)}


def log_predictions(split: str, probs: np.ndarray, digest: str) -> str:
    """Store a run's class probabilities on an evaluation set as ``predictions/<split>.npz``,
    keyed by the set's :func:`ml.eval.gate.heldout_digest`, so that a later promotion gate on the
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


def log_training_digests(run_id: str, records: Any, dataset_version: str | None = None) -> str:
    """Record which images the run's model was trained on: the SHA-256 digests of the manifest
    records (``split``, ``sha256`` columns) of the train and val splits, per split, as
    ``reports/train_digests.json``. The promotion gate keeps its held-out set disjoint from them."""
    seen = records[records["split"].isin(TRAINED_SPLITS)]
    payload = {
        "dataset_version": dataset_version,
        "splits": list(TRAINED_SPLITS),
        "sha256": {
            split: sorted(set(seen.loc[seen["split"] == split, "sha256"].astype(str))) for split in TRAINED_SPLITS
        },
    }
    MlflowClient().log_dict(run_id, payload, TRAIN_DIGESTS_FILE)
    return TRAIN_DIGESTS_FILE


def load_training_digests(model_uri: str) -> set[str] | None:
    """The SHA-256 digests of the images the model behind ``model_uri`` was trained on (train and
    val), or None when its run recorded none (a model logged before they were recorded)."""
    by_split = load_training_digests_by_split(model_uri)
    return None if by_split is None else {d for digests in by_split.values() for d in digests}


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
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"{MODEL_DIR}/{name}", dst_path=tmp)
        if name.endswith(".json"):
            return json.loads(Path(path).read_text())
        return torch.load(path, map_location="cpu", weights_only=True)


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


def fetch_weights(uri: str, folder: Path) -> Path:
    """The ``state_dict.pt`` behind an MLflow ``models:/`` or ``runs:/`` URI, downloaded into
    ``folder`` (the ``fetch`` that :func:`ml.train.models.load_weights` takes). A registered
    version's own artifacts are the MLflow flavour only: its weights are read from the source
    run's ``model/`` folder."""
    if uri.startswith("models:/"):
        return Path(
            mlflow.artifacts.download_artifacts(
                run_id=_run_id_of(uri), dst_path=str(folder), artifact_path=f"{MODEL_DIR}/{STATE_DICT_FILE}"
            )
        )
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(folder)))
    if local.is_file():
        return local
    found = sorted(local.rglob(STATE_DICT_FILE))
    if not found:
        raise WeightsNotFoundError(f"no {STATE_DICT_FILE} artifact under {uri}")
    return found[0]


def load_training_digests_by_split(model_uri: str) -> dict[str, set[str]] | None:
    """:func:`load_training_digests` per split (``{"train": {...}, "val": {...}}``), or None when
    the model's run recorded none (the monitor needs the val split apart: its confusion matrix)."""
    run_id = _run_id_of(model_uri)
    folder = TRAIN_DIGESTS_FILE.rsplit("/", 1)[0]
    if TRAIN_DIGESTS_FILE not in {item.path for item in MlflowClient().list_artifacts(run_id, folder)}:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=TRAIN_DIGESTS_FILE, dst_path=tmp)
        payload = json.loads(Path(local).read_text())
    return {split: set(digests) for split, digests in payload["sha256"].items()}


def source_run_id(model_uri: str) -> str:
    """The run behind a ``runs:/`` or ``models:/`` URI (a registered version's source run)."""
    return _run_id_of(model_uri)
