"""Batch inputs of the monitor (ml/monitor/batch.py): SD-198 folders through a class map with
out-of-map classes and non-image files, unlabelled folders, CSV manifests."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml.data.synth import LABELS
from ml.monitor.batch import load_batch


def _jpg(path: Path, seed: int, size: int = 20) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 255, (size, size + seed % 3, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format="JPEG")
    return path


@pytest.fixture()
def sd198(tmp_path) -> Path:
    """SD-198 names: two mapped classes, one the class map does not cover, a Thumbs.db, a duplicate."""
    root = tmp_path / "sd198"
    for i in range(3):
        _jpg(root / "Acne_Vulgaris" / f"a{i}.jpg", i)
        _jpg(root / "Alopecia Areata" / f"b{i}.jpg", 10 + i)
    for i in range(2):
        _jpg(root / "Stevens_Johnson_Syndrome" / f"s{i}.jpg", 20 + i)
    (root / "Acne_Vulgaris" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0" + b"\0" * 60)
    shutil.copy(root / "Acne_Vulgaris" / "a0.jpg", root / "Alopecia Areata" / "copy_of_a0.jpg")
    return root


def test_sd198_folder_maps_classes_keeps_out_of_map_images_and_skips_thumbs_db(sd198):
    batch = load_batch(sd198, "sd198_to_10", list(LABELS))
    assert batch.layout == "imagefolder"
    labels = batch.records.set_index(batch.records["path"].map(lambda p: Path(p).name))["label"]
    assert (labels[["a0.jpg", "a1.jpg", "a2.jpg"]] == "acne").all()
    assert (labels[["b0.jpg", "b1.jpg", "b2.jpg", "copy_of_a0.jpg"]] == "alopecia").all()
    assert (labels[["s0.jpg", "s1.jpg"]] == "").all()  # out of map: kept, unlabelled
    assert batch.out_of_map == {"Stevens_Johnson_Syndrome": 2}
    assert len(batch.records) == 9 and int(batch.labelled.sum()) == 7
    assert batch.bad["path"].map(lambda p: Path(p).name).tolist() == ["Thumbs.db"]
    assert batch.bad["reason"].tolist() == ["not_an_image"]
    assert [[Path(p).name for p in g] for g in batch.duplicate_groups] == [["a0.jpg", "copy_of_a0.jpg"]]
    text = "\n".join(batch.report_lines())
    assert "Stevens_Johnson_Syndrome (2)" in text and "Acne_Vulgaris/Thumbs.db: not_an_image" in text
    assert "duplicates: Acne_Vulgaris/a0.jpg, Alopecia Areata/copy_of_a0.jpg" in text
    summary = batch.summary()
    assert summary["out_of_map"] == {"Stevens_Johnson_Syndrome": 2} and summary["n_unlabelled"] == 2


def test_without_class_map_folders_match_the_model_classes(sd198):
    batch = load_batch(sd198, None, list(LABELS))
    # no class map: SD-198 names are not model labels, so everything is out of map (never a crash)
    assert set(batch.out_of_map) == {"Acne_Vulgaris", "Alopecia Areata", "Stevens_Johnson_Syndrome"}
    assert (batch.records["label"] == "").all() and len(batch.records) == 9


def test_unlabelled_folder_and_csv(tmp_path):
    folder = tmp_path / "incoming"
    for i in range(3):
        _jpg(folder / f"img{i}.jpg", i)
    (folder / "Thumbs.db").write_bytes(b"not an image")
    (folder / "empty.jpg").write_bytes(b"")
    batch = load_batch(folder, "sd198_to_10", list(LABELS))
    assert batch.layout == "unlabelled" and len(batch.records) == 3 and not batch.labelled.any()
    assert dict(zip(batch.bad["path"].map(lambda p: Path(p).name), batch.bad["reason"])) == {
        "Thumbs.db": "not_an_image",
        "empty.jpg": "zero_bytes",
    }
    csv = tmp_path / "incoming" / "batch.csv"
    csv.write_text("path\nimg0.jpg\nimg1.jpg\n../../etc/passwd\n")
    from_csv = load_batch(csv)
    assert from_csv.layout == "csv-unlabelled" and len(from_csv.records) == 2
    assert from_csv.bad["reason"].tolist() == ["outside_root"]
    labelled_csv = tmp_path / "incoming" / "labelled.csv"
    labelled_csv.write_text("path,label\nimg0.jpg,Acne Vulgaris\nimg1.jpg,Made Up Disease\nimg2.jpg,\n")
    labelled = load_batch(labelled_csv, "sd198_to_10", list(LABELS))
    assert sorted(labelled.records["label"]) == ["", "", "acne"]  # unmapped and empty labels: unlabelled
    assert labelled.out_of_map == {"Made Up Disease": 1}


def test_missing_batch_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_batch(tmp_path / "nope")


def test_a_batch_without_usable_images_stops_the_flow_with_the_files_named(tmp_path):
    from tasks.monitor import load_batch as load_batch_task

    folder = tmp_path / "nothing"
    folder.mkdir()
    (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0" + b"\0" * 20)
    with pytest.raises(ValueError, match="has no usable image.*Thumbs.db: not_an_image"):
        load_batch_task.fn(str(folder), None, list(LABELS))


class _Model:
    """What :func:`ml.monitor.describe.describe` uses of a monitored model; keeps the images it was given."""

    size, classes = 16, ["a", "b"]

    def embed_and_predict(self, images, progress=None):
        self.images = images.copy()
        flat = images.reshape(len(images), -1).astype(float)
        return flat[:, :4], np.tile([0.25, 0.75], (len(images), 1))


def test_the_monitor_flow_decodes_each_batch_image_once(tmp_path, monkeypatch):
    """The flow's load-batch and describe-images tasks: one decode per batch file gives its check, its
    descriptors and the model's input, the same as decoding it anew."""
    import logging
    from collections import Counter

    import pandas as pd

    import ml.data.images as images_module
    import tasks.monitor as monitor_tasks
    from ml.data.cache import resize_crop
    from ml.data.images import load_rgb
    from ml.monitor.describe import describe

    folder = tmp_path / "incoming"
    for i in range(3):
        _jpg(folder / f"img{i}.jpg", i, size=24 + i)
    (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0" + b"\0" * 20)
    decoded, real_decode = Counter(), images_module._decode

    def counting_decode(data, name, *args, **kwargs):
        decoded[Path(name).name] += 1
        return real_decode(data, name, *args, **kwargs)

    monkeypatch.setattr(images_module, "_decode", counting_decode)
    monkeypatch.setattr(monitor_tasks, "get_run_logger", lambda: logging.getLogger(__name__))
    model = _Model()
    batch, images = monitor_tasks.load_batch.fn(str(folder), None, list(LABELS), size=model.size)
    described = monitor_tasks.describe_images.fn(batch.records, model, "batch", images)
    assert decoded == {"img0.jpg": 1, "img1.jpg": 1, "img2.jpg": 1, "Thumbs.db": 1}
    assert batch.bad["reason"].tolist() == ["not_an_image"] and len(described) == 3

    decoded.clear()
    fresh_model = _Model()
    fresh = describe(batch.records, fresh_model)  # nothing decoded before: decoded here, once each
    assert decoded == {"img0.jpg": 1, "img1.jpg": 1, "img2.jpg": 1}
    pd.testing.assert_frame_equal(described.table, fresh.table)
    expected = np.stack([np.asarray(resize_crop(load_rgb(p), model.size)) for p in batch.records["local_path"]])
    assert np.array_equal(model.images, expected) and np.array_equal(fresh_model.images, expected)
    assert described.table["width"].tolist() == [24, 26, 28]
