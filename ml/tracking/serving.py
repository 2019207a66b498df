"""The served model: an MLflow pyfunc that predicts what the promotion gate judged.

A run's test metrics and its promotion gate use the snapshot ensemble (the mean softmax of the
cycle-end snapshots, over the TTA views when the run used TTA) on images decoded at the training
size. :class:`SnapshotEnsembleClassifier` is that model with its preprocessing inside, so that
``mlflow.pyfunc.load_model("models:/skin-lesion-classifier@champion").predict(...)`` gives the
probabilities the gate saw.

Input (``predict``'s ``model_input``), any image size:

- uint8 RGB images: an ``(N, H, W, 3)`` array or a list of ``(H, W, 3)`` arrays (other integer
  dtypes are accepted when every value lies in 0..255, as JSON serving delivers them);
- encoded images: image file paths (a list, a ``pandas.Series``, or a ``DataFrame`` with a
  ``path`` column or a single column, of ``str`` / ``os.PathLike``) or their bytes, decoded with
  :func:`ml.data.images.load_rgb` (EXIF orientation applied), exactly as the image cache does.

Each image is resized and centre-cropped to the training size with the image cache's own
:func:`ml.data.cache.resize_crop`, normalised with the run's statistics and predicted in fp32.

Output: a ``DataFrame`` of class probabilities, one row per image, one float64 column per class
name in the training order (rows sum to 1); the signature's output schema lists the columns.
The signature has no input schema: MLflow's schema enforcement cannot describe "arrays of any
size or paths", so the input is checked here instead (``ValueError`` / ``TypeError``). The
``predict`` type hint (``pd.DataFrame``, what MLflow hands a model once it has an input schema)
is one MLflow infers no schema from, so an explicit input schema given to
:func:`serving_signature` later (e.g. a binary ``image`` column) is the one MLflow enforces.

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
from ml.data.images import load_rgb
from ml.tracking.models import META, MODEL_DIR, WEIGHTS, _model_requirements
from ml.train.models import build_model
from ml.train.precision import resolve_device
from ml.train.predict import StateDict, ensemble_proba

# what ml's code on the prediction path imports besides torch, torchvision, numpy and mlflow
SERVING_PACKAGES = ("pandas", "pillow", "pydantic", "pyyaml", "tqdm")
_ML_PACKAGE = Path(__file__).resolve().parents[1]
# the served model's code file (models-from-code): it calls mlflow.models.set_model
SERVED_MODEL_FILE = Path(__file__).resolve().with_name("served_model.py")


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

    def predict(
        self, context: PythonModelContext | None, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """Class probabilities (N, C) with class-name columns; see the module docstring.

        ``model_input`` is hinted as a ``DataFrame`` (a ``path`` column or one column of paths or
        bytes), the form MLflow serving and schema enforcement deliver; called directly, the
        model also takes what :func:`model_images` takes (image arrays, lists, a ``Series``).
        MLflow infers no input schema from this hint and validates nothing against it."""
        images = model_images(model_input, self.size)
        if len(images) == 0:
            return pd.DataFrame(np.zeros((0, len(self.classes))), columns=self.classes)
        probs = ensemble_proba(self.module, self.states, images, self.norm, self.device, tta=self.tta)
        return pd.DataFrame(probs, columns=self.classes)


def model_images(model_input: Any, size: int) -> np.ndarray:
    """``model_input`` (see the module docstring) as uint8 ``(N, size, size, 3)`` images, each
    resized and centre-cropped like the image cache's."""
    items = _items(model_input)
    out = np.empty((len(items), size, size, 3), dtype=np.uint8)
    for i, item in enumerate(items):
        if isinstance(item, (str, os.PathLike, bytes)):
            img = load_rgb(item)
        else:
            img = Image.fromarray(_rgb_array(item, i))
        out[i] = np.asarray(resize_crop(img, size))
    return out


def _items(model_input: Any) -> list:
    if isinstance(model_input, pd.DataFrame):
        if "path" in model_input.columns:
            return model_input["path"].tolist()
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


def serving_signature(classes: Sequence[str], inputs: Schema | None = None) -> ModelSignature:
    """The served model's signature: the output schema, one double column per class name; no
    input schema unless ``inputs`` is given (today the input is checked by the model)."""
    return ModelSignature(inputs=inputs, outputs=Schema([ColSpec("double", c) for c in classes]))


def serving_model_spec(files: Mapping[str, str], meta: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments of ``mlflow.pyfunc.log_model`` / ``save_model`` for the served model:
    ``files`` maps ``weights`` and ``meta`` to local files (see :func:`ml.tracking.models.write_model_files`)."""
    return {
        "python_model": str(SERVED_MODEL_FILE),  # models-from-code: nothing pickled
        "artifacts": {WEIGHTS: str(files[WEIGHTS]), META: str(files[META])},
        # ml/ travels with the model, so that it loads where skinflow is not installed
        "code_paths": [str(_ML_PACKAGE)],
        "signature": serving_signature(meta["classes"]),
        # declared, not inferred: inference loads the model in a subprocess (seconds per run)
        "pip_requirements": _model_requirements(SERVING_PACKAGES),
        "metadata": {
            "classes": list(meta["classes"]),
            "size": int(meta["size"]),
            "tta": bool(meta.get("tta")),
            "snapshots": int(meta.get("snapshots", 0)),
            "arch": meta["arch"],
            "input": "uint8 RGB images (N,H,W,3) or list of (H,W,3), any size; or image paths",
            "output": "DataFrame of class probabilities, one column per class",
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
