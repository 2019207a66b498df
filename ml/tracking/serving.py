"""The served model: an MLflow pyfunc that predicts what the promotion gate judged.

A run's test metrics and its promotion gate use the snapshot ensemble (the mean softmax of the
cycle-end snapshots, over the TTA views when the run used TTA) on images decoded at the training
size. :class:`SnapshotEnsembleClassifier` is that model with its preprocessing inside, so that
``mlflow.pyfunc.load_model("models:/skin-lesion-classifier@champion").predict(...)`` gives the
probabilities the gate saw.

Input, any image size. Served, and through ``mlflow.pyfunc.load_model(...).predict``, the signature's
input schema applies (:func:`serving_input_schema`): a ``DataFrame`` with an ``image`` column of
encoded image bytes (``binary``: a REST client sends base64 strings in JSON, which MLflow decodes),
or a ``path`` column of files on the serving machine, read only with ``params={"allow_paths": True}``
(local use: ``skinflow predict``). The Python model itself (``unwrap_python_model().predict``) also
takes uint8 RGB images (an ``(N, H, W, 3)`` array or a list of ``(H, W, 3)`` arrays; other integer
dtypes when every value lies in 0..255), lists or a ``Series`` of bytes or paths. Bytes and files are
decoded with :func:`ml.data.images.load_rgb` (EXIF orientation applied), exactly as the image cache
does. An input the model cannot use is an ``MlflowException`` with ``INVALID_PARAMETER_VALUE`` (the
scoring server answers 400) saying which image and why.

Each image is resized and centre-cropped to the training size with the image cache's own
:func:`ml.data.cache.resize_crop`, normalised with the run's statistics and predicted in fp32.

Output: a ``DataFrame`` of class probabilities, one row per image, one float64 column per class
name in the training order (rows sum to 1), calibrated by the run's temperature; a model trained
with trust (:mod:`ml.eval.trust`) adds ``prediction_set`` (its class-conditional conformal set,
``|``-separated, most probable first) and ``refer`` (the abstention flag of
``policies/prediction.yaml``). The signature's output schema lists the columns. The ``predict``
type hint (``pd.DataFrame``) is one MLflow infers no schema from, so the explicit input schema is
the one MLflow enforces.

The model is logged as code (MLflow's models-from-code): ``python_model`` is the file
:data:`SERVED_MODEL_FILE` (``served_model.py``), which builds a :class:`SnapshotEnsembleClassifier`
and hands it to ``mlflow.models.set_model``; nothing is pickled. MLflow runs that file when it
logs the model and when it loads it, with ``ml/`` (a ``code_paths`` entry) importable, so the
served model runs this module's code on the run's weights: the same ``ensemble_proba`` the
run's evaluation and the promotion gate use.

Artifacts: ``weights`` (``snapshots.pt``, a list of state dicts, or ``state_dict.pt`` when the
run kept no snapshots) and ``meta`` (``model_meta.json``: arch, classes, norm, size, tta), the
same files the run logs under ``model/``; loaded with ``weights_only=True``.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.pyfunc import PythonModelContext
from mlflow.types import ColSpec, Schema
from PIL import Image

from ml.data.cache import resize_crop
from ml.data.images import BadImageError, load_rgb
from ml.eval.trust import REFER_COLUMN, SET_COLUMN, Trust, set_labels
from ml.tracking.models import META, MODEL_DIR, WEIGHTS, _model_requirements
from ml.train.models import build_model
from ml.train.precision import resolve_device
from ml.train.predict import StateDict, ensemble_proba

# what ml's code on the prediction path imports besides torch, torchvision, numpy and mlflow
SERVING_PACKAGES = ("crepes", "pandas", "pillow", "pydantic", "pyyaml", "scipy", "tqdm")
_ML_PACKAGE = Path(__file__).resolve().parents[1]
# the served model's code file (models-from-code): it calls mlflow.models.set_model
SERVED_MODEL_FILE = Path(__file__).resolve().with_name("served_model.py")
IMAGE_COLUMN, PATH_COLUMN = "image", "path"  # the input columns: encoded bytes, or (local use) file paths
ALLOW_PATHS = "allow_paths"  # the parameter that lets a served model read file paths


class SnapshotEnsembleClassifier(mlflow.pyfunc.PythonModel):
    """The snapshot ensemble (or the single model) of one run, preprocessing included.

    The model file :data:`SERVED_MODEL_FILE` builds it without state: everything comes from the
    ``weights`` and ``meta`` artifacts in :meth:`load_context`."""

    def load_context(self, context) -> None:
        meta = json.loads(Path(context.artifacts[META]).read_text())
        weights = torch.load(context.artifacts[WEIGHTS], map_location="cpu", weights_only=True)
        self.set_weights(meta, weights if isinstance(weights, list) else [weights])

    def set_weights(
        self, meta: Mapping[str, Any], states: Sequence[StateDict], device: str | torch.device = "auto"
    ) -> None:
        """Use ``states`` (one per snapshot) of the ``meta["arch"]`` module described by ``meta``."""
        if not states:
            raise ValueError("a served model needs at least one state dict")
        self.classes = list(meta["classes"])
        self.size = int(meta["size"])
        self.norm = (tuple(meta["norm"][0]), tuple(meta["norm"][1]))
        self.tta = bool(meta.get("tta", False))
        self.device = resolve_device(device)
        self.module = build_model(meta["arch"], len(self.classes)).to(self.device)
        self.states = list(states)
        self.trust = Trust.from_meta(self.classes, meta.get("trust"))

    def predict(
        self, context: PythonModelContext | None, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """Class probabilities (N, C) with class-name columns, then the set and the refer flag;
        see the module docstring.

        Served (``mlflow models serve``), the input is a ``DataFrame`` with an ``image`` column of
        encoded image bytes (base64 strings in JSON, which MLflow decodes for a ``binary`` column).
        A ``path`` column is read from the serving machine's disk only with
        ``params={"allow_paths": True}`` (local use, as ``skinflow predict`` does). Called directly,
        the model also takes what :func:`model_images` takes (image arrays, lists, a ``Series``).
        An input it cannot use raises an ``MlflowException`` (``INVALID_PARAMETER_VALUE``: a 400
        from the scoring server) that says what was wrong."""
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        try:
            images = model_images(model_input, self.size, allow_paths=bool((params or {}).get(ALLOW_PATHS, False)))
        except (ValueError, TypeError, BadImageError) as exc:
            raise MlflowException(f"skinflow model input: {exc}", error_code=INVALID_PARAMETER_VALUE) from exc
        probs = np.zeros((0, len(self.classes)))
        if len(images):
            probs = ensemble_proba(self.module, self.states, images, self.norm, self.device, tta=self.tta)
        return answer_frame(probs, self.classes, self.trust)


def answer_frame(probs: np.ndarray, classes: Sequence[str], trust: Trust | None) -> pd.DataFrame:
    """The served answer for the ensemble's ``probs``: one float64 column per class (calibrated by
    ``trust``'s temperature), then ``prediction_set`` (the conformal set, ``|``-separated, most
    probable first) and ``refer`` (the policy's abstention flag); a model stored without trust
    answers probabilities only."""
    if trust is None:
        return pd.DataFrame(probs, columns=list(classes))
    calibrated = trust.calibrated(probs)
    answer = trust.apply(calibrated)
    frame = pd.DataFrame(calibrated, columns=list(classes))
    frame[SET_COLUMN] = set_labels(answer["sets"], list(classes), calibrated)
    frame[REFER_COLUMN] = answer["refer"].astype(bool)
    return frame


def model_images(model_input: Any, size: int, allow_paths: bool = True) -> np.ndarray:
    """``model_input`` (see the module docstring) as uint8 ``(N, size, size, 3)`` images, each
    resized and centre-cropped like the image cache's. With ``allow_paths`` False a file path is
    refused (a served model reads no file of the machine it runs on unless told to)."""
    items = _items(model_input)
    out = np.empty((len(items), size, size, 3), dtype=np.uint8)
    for i, item in enumerate(items):
        if isinstance(item, (str, os.PathLike)) and not allow_paths:
            raise ValueError(
                f"image {i}: a file path; the served model reads files only with params "
                f'{{"{ALLOW_PATHS}": true}} (local use): send the encoded image bytes in an '
                f"'{IMAGE_COLUMN}' column (base64 strings in JSON)"
            )
        if isinstance(item, (str, os.PathLike, bytes)):
            try:
                img = load_rgb(item)
            except BadImageError as exc:
                raise ValueError(f"image {i}: {exc}") from exc
        else:
            img = Image.fromarray(_rgb_array(item, i))
        out[i] = np.asarray(resize_crop(img, size))
    return out


def _items(model_input: Any) -> list:
    if isinstance(model_input, pd.DataFrame):
        if IMAGE_COLUMN in model_input.columns and model_input[IMAGE_COLUMN].notna().all():
            return model_input[IMAGE_COLUMN].tolist()
        if PATH_COLUMN in model_input.columns:
            return model_input[PATH_COLUMN].tolist()
        if model_input.shape[1] != 1:
            raise ValueError(
                f"a DataFrame input needs a 'path' column or exactly one column, "
                f"got columns {list(model_input.columns)}"
            )
        return model_input.iloc[:, 0].tolist()
    if isinstance(model_input, pd.Series):
        return model_input.tolist()
    if isinstance(model_input, np.ndarray):
        if model_input.dtype.kind in "OUS" and model_input.ndim == 1:  # paths, bytes or arrays
            return list(model_input)
        if model_input.ndim != 4:
            raise ValueError(f"an array input must be images (N, H, W, 3), got shape {model_input.shape}")
        return list(model_input)
    if isinstance(model_input, (list, tuple)):
        return list(model_input)
    raise TypeError(
        f"expected images (an (N, H, W, 3) uint8 array or a list of (H, W, 3) arrays) or image "
        f"paths (a list, Series or DataFrame of str), got {type(model_input).__name__}"
    )


def _rgb_array(item: Any, index: int) -> np.ndarray:
    arr = np.asarray(item)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"image {index}: expected an (H, W, 3) RGB array, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype.kind not in "iu" or arr.size == 0 or arr.min() < 0 or arr.max() > 255:
        raise ValueError(f"image {index}: expected uint8 pixel values (0..255), got a {arr.dtype} array")
    return arr.astype(np.uint8)


def serving_input_schema() -> Schema:
    """What a REST client sends: an ``image`` column of encoded image bytes (``binary``: base64
    strings in JSON), or, for local use with ``allow_paths``, a ``path`` column; one is enough."""
    return Schema([ColSpec("binary", IMAGE_COLUMN, required=False), ColSpec("string", PATH_COLUMN, required=False)])


def serving_signature(classes: Sequence[str], inputs: Schema | None = None, with_trust: bool = False) -> ModelSignature:
    """The served model's signature: the input schema (``inputs``, default
    :func:`serving_input_schema`), the ``allow_paths`` parameter (default false) and the output
    schema, one double column per class name (and ``prediction_set``, ``refer`` for a model with
    trust)."""
    from mlflow.types import ParamSchema, ParamSpec

    columns = [ColSpec("double", c) for c in classes]
    columns += [ColSpec("string", SET_COLUMN), ColSpec("boolean", REFER_COLUMN)] if with_trust else []
    return ModelSignature(
        inputs=inputs if inputs is not None else serving_input_schema(),
        outputs=Schema(columns),
        params=ParamSchema([ParamSpec(ALLOW_PATHS, "boolean", False)]),
    )


def serving_model_spec(files: Mapping[str, str], meta: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments of ``mlflow.pyfunc.log_model`` / ``save_model`` for the served model:
    ``files`` maps ``weights`` and ``meta`` to local files (see :func:`ml.tracking.models.write_model_files`)."""
    return {
        "python_model": str(SERVED_MODEL_FILE),  # models-from-code: nothing pickled
        "artifacts": {WEIGHTS: str(files[WEIGHTS]), META: str(files[META])},
        # ml/ travels with the model, so that it loads where skinflow is not installed
        "code_paths": [str(_ML_PACKAGE)],
        "signature": serving_signature(meta["classes"], with_trust=bool(meta.get("trust"))),
        # declared, not inferred: inference loads the model in a subprocess (seconds per run)
        "pip_requirements": _model_requirements(SERVING_PACKAGES),
        "metadata": {
            "classes": list(meta["classes"]),
            "size": int(meta["size"]),
            "tta": bool(meta.get("tta")),
            "snapshots": int(meta.get("snapshots", 0)),
            "arch": meta["arch"],
            "input": "DataFrame with an 'image' column of encoded image bytes (base64 in JSON); "
            "a 'path' column with params {'allow_paths': true} (local use)",
            "output": "DataFrame of calibrated class probabilities, one column per class, then "
            "prediction_set (conformal, '|'-separated) and refer (bool)",
        },
    }


def log_serving_model(files: Mapping[str, str], meta: Mapping[str, Any]) -> ModelInfo:
    """Log the served model (:class:`SnapshotEnsembleClassifier`, from code) as ``model`` in the
    active run; its ``ModelInfo.model_uri`` is what :func:`ml.tracking.registry.register_version`
    takes, its ``model_id`` what the run's evaluation metrics are linked to."""
    with warnings.catch_warnings():
        # no input example on purpose: with one, MLflow would load the model and predict the
        # example on every log; the input is checked by model_images (tests cover the round trip)
        warnings.filterwarnings("ignore", message=".*An input example was not provided", category=UserWarning)
        return mlflow.pyfunc.log_model(name=MODEL_DIR, **serving_model_spec(files, meta))
