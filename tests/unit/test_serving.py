"""The served pyfunc (ml.tracking.serving) saved to and loaded from a local folder: its
preprocessing, its snapshot-and-TTA averaging and its input checks (no tracking store)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ml.data.cache import resize_crop
from ml.tracking import models as tracked_models
from ml.tracking import serving
from ml.train.models import build_model
from ml.train.transforms import TTA_VIEWS, to_float_batch, tta_view

# saved without an input example on purpose (see serving.log_serving_model)
pytestmark = pytest.mark.filterwarnings("ignore:.*An input example was not provided:UserWarning")
CLASSES = ["acne", "eczema", "nevus"]
NORM = [[0.5, 0.45, 0.4], [0.25, 0.2, 0.22]]
SIZE = 32


def _states(n: int) -> list[dict]:
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        out.append(build_model("resnet18", len(CLASSES)).state_dict())
    return out


def _images(seed: int = 0) -> list[np.ndarray]:
    """Uint8 RGB images of other sizes than the training size, one of them not square."""
    rng = np.random.default_rng(seed)
    return [(rng.random(shape) * 255).astype(np.uint8) for shape in ((40, 36, 3), (48, 48, 3), (33, 50, 3))]


def _served(tmp_path: Path, states: list[dict], tta: bool, name: str = "m"):
    snapshots = states if len(states) > 1 else []
    meta = tracked_models.model_meta("resnet18", CLASSES, len(snapshots), {"norm": NORM, "size": SIZE, "tta": tta})
    folder = tmp_path / f"{name}-files"
    folder.mkdir()
    files = tracked_models.write_model_files(folder, states[-1], snapshots, meta)
    mlflow.pyfunc.save_model(str(tmp_path / name), **serving.serving_model_spec(files, meta))
    return mlflow.pyfunc.load_model(str(tmp_path / name))


@torch.no_grad()
def _expected(states: list[dict], images: list[np.ndarray], views: tuple[str, ...]) -> np.ndarray:
    """Mean softmax over snapshots and views, computed here from the pieces."""
    batch = np.stack([np.asarray(resize_crop(Image.fromarray(img), SIZE)) for img in images])
    x = to_float_batch(torch.from_numpy(batch), *NORM)
    model = build_model("resnet18", len(CLASSES)).eval()
    total = torch.zeros(len(images), len(CLASSES), dtype=torch.float64)
    for state in states:
        model.load_state_dict(state)
        for view in views:
            total += torch.softmax(model(tta_view(x, view)), dim=1).double()
    return (total / (len(states) * len(views))).numpy()


def test_tta_averages_the_views_of_every_snapshot(tmp_path: Path) -> None:
    states, images = _states(2), _images()
    with_tta = _served(tmp_path, states, tta=True).unwrap_python_model().predict(None, images)
    assert isinstance(with_tta, pd.DataFrame) and list(with_tta.columns) == CLASSES
    np.testing.assert_allclose(with_tta.to_numpy(), _expected(states, images, TTA_VIEWS), rtol=0, atol=1e-6)
    np.testing.assert_allclose(with_tta.sum(axis=1), 1.0, atol=1e-6)
    # the views matter: without TTA the same snapshots predict the identity view only
    plain = _served(tmp_path, states, tta=False, name="plain").unwrap_python_model().predict(None, images).to_numpy()
    np.testing.assert_allclose(plain, _expected(states, images, ("identity",)), rtol=0, atol=1e-6)
    assert np.abs(plain - with_tta.to_numpy()).max() > 1e-4


def test_single_model_and_input_forms(tmp_path: Path) -> None:
    """Without snapshots the state dict is the model; arrays, paths and bytes are one input to the
    Python model (paths only when allowed)."""
    states = _states(1)
    model = _served(tmp_path, states, tta=False).unwrap_python_model()
    images = [img for img in _images(1) if img.shape[0] == img.shape[1]] * 2  # (N, H, W, 3) needs one size
    expected = _expected(states, images, ("identity",))
    as_array = model.predict(None, np.stack(images)).to_numpy()
    np.testing.assert_allclose(as_array, expected, rtol=0, atol=1e-6)
    paths = []
    for i, img in enumerate(images):
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(img).save(paths[-1])  # lossless: decodes to the same pixels
    for given in (
        [str(p) for p in paths],
        paths,
        pd.Series([str(p) for p in paths]),
        pd.DataFrame({"path": [str(p) for p in paths], "note": "x"}),
        pd.DataFrame({"file": paths}),
        pd.DataFrame({"image": [p.read_bytes() for p in paths]}),
        [p.read_bytes() for p in paths],
        np.stack(images).astype(np.int64),
    ):
        answer = model.predict(None, given, params={"allow_paths": True})
        np.testing.assert_allclose(answer.to_numpy(), expected, rtol=0, atol=1e-6)
    empty = model.predict(None, [])
    assert empty.shape == (0, len(CLASSES)) and list(empty.columns) == CLASSES


def test_the_served_contract_is_image_bytes_and_paths_only_when_allowed(tmp_path: Path) -> None:
    """Through MLflow (schema enforced): an ``image`` column of encoded bytes; a ``path`` column is
    read only with ``allow_paths``; an undecodable image is an MlflowException naming it."""
    from mlflow.exceptions import MlflowException

    states = _states(1)
    model = _served(tmp_path, states, tta=False)
    images = [img for img in _images(3) if img.shape[0] == img.shape[1]]
    paths = []
    for i, img in enumerate(images):
        paths.append(str(tmp_path / f"i{i}.png"))
        Image.fromarray(img).save(paths[-1])
    expected = _expected(states, images, ("identity",))
    by_bytes = model.predict(pd.DataFrame({"image": [Path(p).read_bytes() for p in paths]}))
    np.testing.assert_allclose(by_bytes.to_numpy(), expected, rtol=0, atol=1e-6)
    with pytest.raises(MlflowException, match="image 0: a file path.*allow_paths"):
        model.predict(pd.DataFrame({"path": paths}))
    by_path = model.predict(pd.DataFrame({"path": paths}), params={"allow_paths": True})
    np.testing.assert_allclose(by_path.to_numpy(), expected, rtol=0, atol=1e-6)
    with pytest.raises(MlflowException, match="image 1: ") as bad:
        model.predict(pd.DataFrame({"image": [Path(paths[0]).read_bytes(), b"not an image at all"]}))
    assert bad.value.error_code == "INVALID_PARAMETER_VALUE"


@pytest.mark.parametrize(
    "bad, error",
    [
        (np.zeros((2, 8, 8, 3), np.float32), "uint8"),
        (np.full((1, 8, 8, 3), 300, np.int64), "uint8"),
        (np.zeros((8, 8, 3), np.uint8), r"\(N, H, W, 3\)"),
        ([np.zeros((8, 8), np.uint8)], r"\(H, W, 3\)"),
        (pd.DataFrame({"a": ["x.png"], "b": ["y.png"]}), "'path' column"),
        ({"path": "x.png"}, "got dict"),
    ],
)
def test_unusable_inputs_are_refused_with_a_reason(tmp_path: Path, bad, error) -> None:
    with pytest.raises((ValueError, TypeError), match=error):
        serving.model_images(bad, SIZE)


def test_signature_names_the_classes_and_the_model_carries_its_code(tmp_path: Path) -> None:
    _served(tmp_path, _states(1), tta=False)
    mlmodel = mlflow.models.Model.load(str(tmp_path / "m" / "MLmodel"))
    inputs = [(c.name, c.type.name, c.required) for c in mlmodel.signature.inputs.inputs]
    assert inputs == [("image", "binary", False), ("path", "string", False)]
    assert [(p.name, p.default) for p in mlmodel.signature.params.params] == [("allow_paths", False)]
    assert [c.name for c in mlmodel.signature.outputs.inputs] == CLASSES
    assert (tmp_path / "m" / "code" / "ml" / "tracking" / "serving.py").is_file()
    requirements = (tmp_path / "m" / "requirements.txt").read_text()
    assert all(f"{pkg}==" in requirements for pkg in ("torch", "pillow", "pandas", "mlflow"))


def test_the_model_is_logged_from_code_with_a_typed_predict(tmp_path: Path, recwarn) -> None:
    """Models-from-code: MLflow runs served_model.py (no pickle) and loads the same class; its
    ``predict`` carries type hints MLflow accepts without a warning and infers no schema from."""
    import inspect

    model = _served(tmp_path, _states(1), tta=False)
    mlmodel = mlflow.models.Model.load(str(tmp_path / "m" / "MLmodel"))
    pyfunc = mlmodel.flavors["python_function"]
    assert pyfunc["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert Path(pyfunc["model_code_path"]).name == "served_model.py" and "python_model" not in pyfunc
    assert (tmp_path / "m" / "served_model.py").is_file() and not (tmp_path / "m" / "python_model.pkl").exists()
    assert isinstance(model.unwrap_python_model(), serving.SnapshotEnsembleClassifier)
    assert not hasattr(serving.SnapshotEnsembleClassifier, "_skip_type_hint_validation")
    hints = inspect.get_annotations(serving.SnapshotEnsembleClassifier.predict, eval_str=True)
    assert hints["model_input"] is pd.DataFrame and hints["return"] is pd.DataFrame
    assert model.unwrap_python_model().predict_type_hints.input is pd.DataFrame
    noted = [str(w.message) for w in recwarn if "type hint" in str(w.message).lower() or "pickle" in str(w.message)]
    assert not noted, noted


def test_an_explicit_input_schema_is_the_one_mlflow_keeps(tmp_path: Path) -> None:
    """Room for a binary ``image`` input later: the type hint infers no schema that would replace
    an explicit one, and a DataFrame of encoded images is an input the model takes."""
    from mlflow.types import ColSpec, Schema

    states = _states(1)
    meta = tracked_models.model_meta("resnet18", CLASSES, 0, {"norm": NORM, "size": SIZE, "tta": False})
    (tmp_path / "files").mkdir()
    files = tracked_models.write_model_files(tmp_path / "files", states[0], [], meta)
    spec = serving.serving_model_spec(files, meta)
    spec["signature"] = serving.serving_signature(CLASSES, inputs=Schema([ColSpec("binary", "image")]))
    mlflow.pyfunc.save_model(str(tmp_path / "m"), **spec)
    model = mlflow.pyfunc.load_model(str(tmp_path / "m"))
    assert [(c.name, c.type.name) for c in model.metadata.signature.inputs.inputs] == [("image", "binary")]
    images = [img for img in _images(2) if img.shape[0] == img.shape[1]]
    encoded = []
    for i, img in enumerate(images):
        Image.fromarray(img).save(tmp_path / f"{i}.png")
        encoded.append((tmp_path / f"{i}.png").read_bytes())
    probs = model.predict(pd.DataFrame({"image": encoded}))
    np.testing.assert_allclose(probs.to_numpy(), _expected(states, images, ("identity",)), rtol=0, atol=1e-6)
