"""The registered model is the judged model: a run trained with snapshots, logged and
registered through the tasks against a real sqlite store, loads back from the registry as a
pyfunc that reproduces the held-out probabilities the promotion gate reads, from raw images at
their file size and from the image files."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from ml.data.images import load_rgb
from ml.eval.gate import heldout_digest
from ml.tracking import models as tracked_models
from ml.tracking import registry
from tests.conftest import use_local_stores

NAME = "skin-lesion-classifier"
FILE_SIZE, CACHE_SIZE = 48, 32


@pytest.fixture(scope="module")
def registered(tmp_path_factory, monkeypatch_module):
    """A 3-epoch sgdr_dlr_clm run (two snapshots, TTA) logged by ``log_training_run`` and registered
    by ``register_model`` (the tasks' functions): ``(run_id, result, cache, manifest, logged, version)``."""
    from ml.data.cache import build_cache
    from ml.data.manifest import build_manifest
    from ml.data.split import split_manifest
    from ml.data.synth import SynthConfig, generate
    from ml.settings import get_settings
    from ml.train.config import TrainConfig
    from ml.train.loop import fit
    from tasks.mlflow_tasks import open_run, register_model
    from tasks.training import calibrate_model, evaluate_model, log_training_run

    root = tmp_path_factory.mktemp("serving")
    use_local_stores(monkeypatch_module, root)
    generate(root / "ds", SynthConfig(per_class=6, size=FILE_SIZE, seed=0), progress=False)
    manifest = split_manifest(build_manifest(root / "ds"), val_frac=0.2, test_frac=0.2, seed=0)
    cache = build_cache(manifest, CACHE_SIZE, root / "cache")
    cfg = TrainConfig(schedule="sgdr_dlr_clm", epochs=3, batch_size=16, lr=0.01, tta=True, device="cpu", progress=False)
    result = fit(cache.subset("train"), cache.subset("val"), cache.classes, cfg)
    result = calibrate_model.fn(result, cache, str(root / "out"))  # temperature, conformal sets, refer rule
    evaluation = evaluate_model.fn(result, cache, "test")
    run_id, _ = open_run.fn("skinflow-retrain", "serving")
    logged = log_training_run.fn(run_id, result, evaluation, "test", cache, manifest, str(root / "out"))
    version = register_model.fn(logged["model_uri"], {"dataset_version": cache.version})
    yield run_id, result, cache, manifest, logged, version
    get_settings.cache_clear()


def test_registered_pyfunc_reproduces_the_gated_probabilities(registered) -> None:
    run_id, result, cache, manifest, _, version = registered
    assert len(result.snapshots) >= 2  # an ensemble, not the final model alone
    images, labels = cache.subset("test")
    stored = tracked_models.load_predictions(f"models:/{NAME}/{version}", heldout_digest(images, labels, cache.classes))
    assert stored is not None
    served = mlflow.pyfunc.load_model(f"models:/{NAME}@challenger")

    paths = manifest.records.loc[manifest.records["split"] == "test", "local_path"].tolist()
    originals = np.stack([np.asarray(load_rgb(p)) for p in paths])
    assert originals.shape[1:] == (FILE_SIZE, FILE_SIZE, 3) and originals.dtype == np.uint8
    encoded = pd.DataFrame({"image": [Path(p).read_bytes() for p in paths]})  # what a REST client sends
    for given, params in ((encoded, None), (pd.DataFrame({"path": paths}), {"allow_paths": True})):
        answer = served.predict(given, params=params)
        assert isinstance(answer, pd.DataFrame) and list(answer.columns) == [*cache.classes, "prediction_set", "refer"]
        np.testing.assert_allclose(answer[cache.classes].to_numpy(), stored, rtol=0, atol=1e-5)
        assert answer["refer"].dtype == bool and answer["prediction_set"].str.len().gt(0).all()
    as_arrays = served.unwrap_python_model().predict(None, originals)  # decoded pixels, in Python
    np.testing.assert_allclose(as_arrays[cache.classes].to_numpy(), stored, rtol=0, atol=1e-5)
    # the stored (gated) probabilities are the calibrated ones: the run's temperature applied
    raw = result.predict_proba(images, calibrated=False)
    np.testing.assert_allclose(result.trust.calibrated(raw), stored, rtol=0, atol=1e-5)
    assert result.trust.calibration.temperature != 1.0 and np.abs(raw - stored).max() > 1e-3
    # the final model alone, or the ensemble without TTA, predicts something else
    from ml.train.predict import ensemble_proba, predict_proba

    alone = predict_proba(result.model, images, result.norm, torch.device("cpu"), tta=True)
    no_tta = ensemble_proba(result.model, result.snapshots, images, result.norm, torch.device("cpu"))
    assert np.abs(alone - stored).max() > 1e-3 and np.abs(no_tta - stored).max() > 1e-3


def test_gate_recomputes_what_the_run_evaluated(registered) -> None:
    """Predicted again from the stored weights (``recompute=True``), with the run's TTA."""
    from ml.train import recipes
    from tasks.mlflow_tasks import _predictions

    _, _, cache, _, _, version = registered
    images, labels = cache.subset("test")
    uri = f"models:/{NAME}/{version}"
    stored = tracked_models.load_predictions(uri, heldout_digest(images, labels, cache.classes))
    probs, meta, source = _predictions(uri, images, labels, cache.classes, recompute=True)
    assert source == "recomputed" and meta["tta"] is True and meta["trust"]["temperature"] > 0
    np.testing.assert_allclose(probs, stored, rtol=0, atol=1e-5)  # calibrated, as the run evaluated it
    states, _ = tracked_models.load_model_states(uri)
    again = recipes.predict_logged(
        meta["arch"], meta["classes"], states, meta["norm"], images, tta=meta["tta"], trust=meta["trust"]
    )
    np.testing.assert_allclose(again, stored, rtol=0, atol=1e-5)


def test_version_keeps_its_run_and_the_real_module_weights(registered) -> None:
    run_id, result, _, _, logged, version = registered
    assert logged["model_uri"].startswith("models:/m-")
    assert registry.get_alias_version(NAME, "challenger") == version
    mv = MlflowClient().get_model_version(NAME, version)
    assert mv.run_id == run_id and mv.tags["dataset_version"]
    registry.set_alias(NAME, "champion", version)
    uri = f"models:/{NAME}@champion"
    # fine-tuning, Grad-CAM and embeddings rebuild the real module from the run's state dicts
    with tempfile.TemporaryDirectory() as tmp:
        state = torch.load(tracked_models.fetch_weights(uri, Path(tmp)), map_location="cpu", weights_only=True)
    assert all(torch.equal(state[k], v.cpu()) for k, v in result.model.state_dict().items())
    states, meta = tracked_models.load_model_states(uri)
    assert meta["snapshots"] == len(states) == len(result.snapshots) and meta["tta"] is True
    assert all(torch.equal(a[k], b[k]) for a, b in zip(states, result.snapshots, strict=True) for k in a)
    info = mlflow.models.get_model_info(uri)
    assert "python_function" in info.flavors and "pytorch" not in info.flavors
    assert [c.name for c in info.signature.outputs.inputs] == [*meta["classes"], "prediction_set", "refer"]


def test_a_run_id_is_not_a_model_uri(registered) -> None:
    with pytest.raises(ValueError, match="models:/<model_id>"):
        registry.register_version(registered[0], NAME)


def test_the_test_metrics_are_on_the_logged_model_with_the_test_split(registered) -> None:
    """The run logs the served model first, then its test metrics linked to it (``model_id``) and
    to the test split as an MLflow dataset whose digest is the evaluation set's, the key of the
    stored predictions the gate reads: the LoggedModel page shows them with the dataset."""
    run_id, _, cache, _, logged, _ = registered
    model_id = logged["model_uri"].removeprefix("models:/")
    images, labels = cache.subset("test")
    digest = heldout_digest(images, labels, cache.classes)
    linked = {m.key: m for m in mlflow.get_logged_model(model_id).metrics}
    run = MlflowClient().get_run(run_id)
    for key in ("test_accuracy", "test_balanced_accuracy", "test_macro_f1", "test_loss", "test_ece"):
        assert (linked[key].dataset_name, linked[key].dataset_digest) == ("dataset-test", digest[:36]), key
        assert linked[key].value == pytest.approx(run.data.metrics[key]) and linked[key].run_id == run_id
    # calibration: ECE on the validation images before and after temperature scaling, and its plot
    assert {"val_ece", "val_ece_calibrated", "temperature"} <= set(run.data.metrics)
    assert run.data.metrics["val_ece_calibrated"] <= run.data.metrics["val_ece"] + 1e-6
    assert "plots/reliability.png" in [a.path for a in MlflowClient().list_artifacts(run_id, "plots")]
    inputs = {i.dataset.name: {t.key: t.value for t in i.tags} for i in run.inputs.dataset_inputs}
    assert inputs["dataset-test"]["mlflow.data.context"] == "testing"
    # per skin-tone group of the test images: balanced accuracy with the count it rests on
    from ml.quality.skin_tone import groups_of

    found = dict(zip(*np.unique(groups_of(images).astype(str), return_counts=True), strict=True))
    assert {k.removeprefix("test_images_"): v for k, v in run.data.metrics.items() if k.startswith("test_images_")} == {
        g: float(n) for g, n in found.items()
    }
    assert all(f"test_balanced_accuracy_{g}" in run.data.metrics for g in found)
    assert inputs["dataset"]["mlflow.data.context"] == "training"
    info = mlflow.models.get_model_info(logged["model_uri"])
    assert info.flavors["python_function"]["loader_module"] == "mlflow.pyfunc.loaders.code_model"  # from code


def test_predict_gives_one_row_per_file_with_the_served_probabilities(registered, prefect_harness, tmp_path, capsys):
    """`skinflow predict FOLDER`: every file is a row (images predicted by the registered pyfunc
    itself, the rest left out with their reason), in CSV and Parquet, recorded in MLflow."""
    import json
    import shutil

    from flows.cli import main

    _, _, _, manifest, _, version = registered
    uri = f"models:/{NAME}/{version}"
    folder = tmp_path / "incoming"
    folder.mkdir()
    for i, p in enumerate(manifest.records.loc[manifest.records["split"] == "test", "local_path"][:3]):
        shutil.copy(p, folder / f"img{i}.jpg")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("not an image")
    for out in (tmp_path / "pred.csv", tmp_path / "pred.parquet"):
        with pytest.raises(SystemExit) as done:
            main(["predict", str(folder), "--model", uri, "--out", str(out)])
        printed = capsys.readouterr()
        assert done.value.code == 0, printed.err[-3000:]
        summary = json.loads(printed.out[printed.out.index("{") :])
        assert (summary["n_predicted"], summary["n_left_out"]) == (3, 2)
        table = pd.read_parquet(out) if out.suffix == ".parquet" else pd.read_csv(out, keep_default_na=False)
        rows = {Path(p).name: r for p, r in zip(table["path"], table.to_dict("records"), strict=True)}
        assert set(rows) == {"img0.jpg", "img1.jpg", "img2.jpg", "empty.jpg", "notes.jpg"}
        assert (rows["empty.jpg"]["status"], rows["empty.jpg"]["reason"]) == ("left_out", "zero_bytes")
        assert (rows["notes.jpg"]["status"], rows["notes.jpg"]["reason"]) == ("left_out", "not_an_image")
    images = sorted(str(p) for p in folder.glob("img*.jpg"))
    served = mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"path": images}), params={"allow_paths": True})
    classes = [c for c in served.columns if c not in ("prediction_set", "refer")]
    predicted = table.set_index("path").loc[images]
    np.testing.assert_allclose(predicted[[f"p_{c}" for c in classes]].to_numpy(), served[classes].to_numpy(), atol=1e-6)
    assert predicted["label"].tolist() == served[classes].idxmax(axis=1).tolist()
    assert predicted["prediction_set"].tolist() == served["prediction_set"].tolist()
    assert predicted["refer"].tolist() == served["refer"].tolist()
    assert (summary["n_referred"], summary["referral_rate"]) == (int(served["refer"].sum()), served["refer"].mean())
    assert (predicted["top1"] == predicted["label"]).all() and (predicted["top1_p"] >= predicted["top2_p"]).all()
    run = MlflowClient().get_run(summary["mlflow_run_id"])
    assert run.data.metrics["n_predicted"] == 3 and run.data.metrics["n_left_out"] == 2
    assert run.data.params["model_uri"] == uri
    assert [a.path for a in MlflowClient().list_artifacts(run.info.run_id, "predictions")] == [
        "predictions/pred.parquet"
    ]


def test_predict_reads_a_csv_of_paths_and_an_s3_prefix_with_bad_files_among_good_ones(
    registered, prefect_harness, s3, tmp_path, monkeypatch, capsys
):
    """Issue #26: the other two kinds of source. A CSV of paths (one empty file, one missing) and an
    ``s3://`` prefix on a real local S3 endpoint (an empty object, a Thumbs.db): each file's outcome
    is its row, and the images get the served model's probabilities."""
    import json
    import shutil

    from flows.cli import main
    from ml.settings import get_settings

    _, _, _, manifest, _, version = registered
    uri = f"models:/{NAME}/{version}"
    sources = manifest.records.loc[manifest.records["split"] == "test", "local_path"][:2].tolist()
    served = mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"path": sources}), params={"allow_paths": True})

    def run(source: str, out: Path, *more: str) -> dict[str, dict]:
        with pytest.raises(SystemExit) as done:
            main(["predict", source, "--model", uri, "--out", str(out), *more])
        printed = capsys.readouterr()
        assert done.value.code == 0, printed.err[-3000:]
        table = pd.read_csv(out, keep_default_na=False)
        return {p.rsplit("/", 1)[-1]: r for p, r in zip(table["path"], table.to_dict("records"), strict=True)}

    def same_as_served(rows: dict[str, dict]) -> None:
        for i, name in enumerate(("img0.jpg", "img1.jpg")):
            assert rows[name]["status"] == "predicted" and rows[name]["prediction_set"] == served["prediction_set"][i]
            for c in [c for c in served.columns if c not in ("prediction_set", "refer")]:
                assert float(rows[name][f"p_{c}"]) == pytest.approx(served[c][i], abs=1e-6)

    folder = tmp_path / "listed"
    folder.mkdir()
    for i, p in enumerate(sources):
        shutil.copy(p, folder / f"img{i}.jpg")
    (folder / "empty.jpg").write_bytes(b"")
    pd.DataFrame({"path": ["img0.jpg", "img1.jpg", "empty.jpg", "gone.jpg"]}).to_csv(folder / "batch.csv", index=False)
    rows = run(str(folder / "batch.csv"), tmp_path / "from_csv.csv", "--explain", str(tmp_path / "cams"))
    assert set(rows) == {"img0.jpg", "img1.jpg", "empty.jpg", "gone.jpg"}
    # --explain: a Grad-CAM overlay of the given label for each predicted image, none for the others
    from PIL import Image

    assert rows["empty.jpg"]["explanation"] == rows["gone.jpg"]["explanation"] == ""
    for name in ("img0.jpg", "img1.jpg"):
        overlay = Path(rows[name]["explanation"])
        assert overlay.parent == tmp_path / "cams" and overlay.name.endswith(f"_{rows[name]['label']}.png")
        with Image.open(overlay) as im:
            assert im.mode == "RGB" and im.size[0] == im.size[1] > 16
    assert len(list((tmp_path / "cams").glob("*.png"))) == 2
    assert (rows["empty.jpg"]["status"], rows["empty.jpg"]["reason"]) == ("left_out", "zero_bytes")
    assert (rows["gone.jpg"]["status"], rows["gone.jpg"]["reason"]) == ("left_out", "missing_file")
    same_as_served(rows)

    storage, bucket = s3
    for i, p in enumerate(sources):
        storage.put_bytes(Path(p).read_bytes(), f"{bucket}/incoming/img{i}.jpg")
    storage.put_bytes(b"", f"{bucket}/incoming/empty.jpg")
    storage.put_bytes(b"\xd0\xcf\x11\xe0junk", f"{bucket}/incoming/Thumbs.db")
    monkeypatch.setenv("SKINFLOW_S3_ENDPOINT_URL", storage.settings.s3_endpoint_url)
    get_settings.cache_clear()
    try:
        rows = run(f"{bucket}/incoming", tmp_path / "from_s3.csv")
    finally:
        monkeypatch.delenv("SKINFLOW_S3_ENDPOINT_URL")
        get_settings.cache_clear()
    assert set(rows) == {"img0.jpg", "img1.jpg", "empty.jpg", "Thumbs.db"}
    assert (rows["empty.jpg"]["status"], rows["empty.jpg"]["reason"]) == ("left_out", "zero_bytes")
    assert (rows["Thumbs.db"]["status"], rows["Thumbs.db"]["reason"]) == ("left_out", "not_an_image")
    assert all(json.dumps(r["path"]).startswith(f'"{bucket}/incoming/') for r in rows.values())
    same_as_served(rows)


@pytest.fixture(scope="module")
def model_server(registered, tmp_path_factory):
    """``mlflow models serve`` on the registered challenger, a real process on a free 127.0.0.1 port
    (the environment this suite runs in: ``--env-manager local``)."""
    from tests.conftest import VENV_BIN, Service, free_port

    port = free_port()
    svc = Service(
        "mlflow-models-serve",
        [str(VENV_BIN / "mlflow"), "models", "serve", "-m", f"models:/{NAME}@challenger", "--env-manager", "local"]
        + ["-h", "127.0.0.1", "-p", str(port)],
        f"http://127.0.0.1:{port}/ping",
        tmp_path_factory.mktemp("serve"),
        env={"PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"},  # it execs uvicorn by name
        timeout=180,
    )
    yield f"http://127.0.0.1:{port}"
    svc.close()


def _post(url: str, body: dict) -> tuple[int, dict]:
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        f"{url}/invocations", json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_mlflow_models_serve_answers_real_image_bytes_as_predict_does(
    registered, model_server, prefect_harness, tmp_path
):
    """A REST client posts base64 JPEG bytes in an ``image`` column; the server answers the
    probabilities, set and refer flag that ``skinflow predict`` writes for the same files. A path
    (without ``allow_paths``) and bytes that are no image get a 400 that names the problem."""
    import base64
    import json
    import shutil

    from flows.cli import main

    _, _, _, manifest, _, version = registered
    folder = tmp_path / "incoming"
    folder.mkdir()
    for i, p in enumerate(manifest.records.loc[manifest.records["split"] == "test", "local_path"][:3]):
        shutil.copy(p, folder / f"img{i}.jpg")
    files = sorted(folder.glob("img*.jpg"))
    body = {
        "dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(f.read_bytes()).decode()] for f in files]}
    }
    status, answer = _post(model_server, body)
    assert status == 200, answer
    served = pd.DataFrame(answer["predictions"])
    with pytest.raises(SystemExit) as done:
        main(["predict", str(folder), "--model", f"models:/{NAME}/{version}", "--out", str(tmp_path / "p.csv")])
    assert done.value.code == 0
    table = pd.read_csv(tmp_path / "p.csv", keep_default_na=False).set_index("path").loc[[str(f) for f in files]]
    classes = [c for c in served.columns if c not in ("prediction_set", "refer")]
    np.testing.assert_allclose(table[[f"p_{c}" for c in classes]].to_numpy(), served[classes].to_numpy(), atol=1e-6)
    assert table["prediction_set"].tolist() == served["prediction_set"].tolist()
    assert table["refer"].tolist() == served["refer"].tolist()
    # a path is not read on the server unless allowed; bytes that are no image are named
    status, error = _post(model_server, {"dataframe_split": {"columns": ["path"], "data": [[str(files[0])]]}})
    assert status == 400 and "a file path" in error["message"] and "allow_paths" in error["message"]
    garbage = base64.b64encode(b"GIF89a but not really").decode()
    status, error = _post(model_server, {"dataframe_split": {"columns": ["image"], "data": [[garbage]]}})
    assert status == 400 and "image 0:" in error["message"], json.dumps(error)[:500]
