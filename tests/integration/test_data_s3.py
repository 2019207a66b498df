"""Manifests from s3:// (a real moto_server endpoint) equal the local ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ml.data.manifest import build_manifest
from ml.settings import Settings
from ml.storage import Storage

CLASSES = ("acne", "tumor", "wheal")


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    """3 classes x 3 images, one empty file, and a CSV manifest at the root."""
    root = tmp_path / "ds"
    for ci, label in enumerate(CLASSES):
        (root / label).mkdir(parents=True)
        for i in range(3):
            rng = np.random.default_rng(10 * ci + i)
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / label / f"{i}.jpg")
    (root / "wheal" / "empty.jpg").write_bytes(b"")
    files = sorted(root.rglob("*.jpg"))
    pd.DataFrame(
        {"path": [p.relative_to(root).as_posix() for p in files], "label": [p.parent.name for p in files]}
    ).to_csv(root / "manifest.csv", index=False)
    return root


@pytest.fixture()
def storage(s3, tmp_path: Path) -> tuple[Storage, str]:
    """The fixture's endpoint, with S3 objects materialised under this test's tmp folder."""
    base, bucket = s3
    settings = Settings(s3_endpoint_url=base.endpoint_url, s3_max_attempts=2, data_root=tmp_path / "data")
    return Storage(settings), bucket


def _comparable(records: pd.DataFrame, base: str) -> list[tuple]:
    rel = records["path"].str.slice(len(base) + 1)
    return sorted(zip(rel, records["label"], records["split"], records["sha256"], records["bytes"], strict=True))


@pytest.mark.parametrize("kind", ["folder", "csv"])
def test_s3_manifest_equals_local(storage, dataset: Path, tmp_path: Path, kind: str) -> None:
    store, bucket = storage
    uri = f"{bucket}/datasets/ds"
    store.sync_dir_up(dataset, uri)
    local_src, s3_src = (dataset, uri) if kind == "folder" else (dataset / "manifest.csv", f"{uri}/manifest.csv")

    local = build_manifest(local_src, storage=store)
    remote = build_manifest(s3_src, storage=store)

    assert remote.version == local.version
    assert remote.classes == local.classes == list(CLASSES)
    assert _comparable(remote.records, uri) == _comparable(local.records, str(dataset))
    assert remote.records["path"].str.startswith(f"{uri}/").all()
    cache_dir = tmp_path / "data" / "s3cache"
    for row in remote.records.itertuples():
        assert Path(row.local_path).is_relative_to(cache_dir)
        assert Path(row.local_path).read_bytes() == (dataset / row.path[len(uri) + 1 :]).read_bytes()
    assert remote.bad[["path", "reason"]].values.tolist() == [[f"{uri}/wheal/empty.jpg", "zero_bytes"]]


def test_materialised_files_are_content_addressed(storage, dataset: Path) -> None:
    store, bucket = storage
    uri = f"{bucket}/ds"
    store.sync_dir_up(dataset, uri)
    first = build_manifest(uri, storage=store)
    mtimes = {p: Path(p).stat().st_mtime_ns for p in first.records["local_path"]}
    second = build_manifest(uri, storage=store)
    assert {p: Path(p).stat().st_mtime_ns for p in second.records["local_path"]} == mtimes
    assert all(Path(p).stem == sha for p, sha in zip(first.records["local_path"], first.records["sha256"], strict=True))


def test_missing_s3_object_in_csv_is_reported(storage, dataset: Path) -> None:
    store, bucket = storage
    uri = f"{bucket}/ds"
    store.sync_dir_up(dataset, uri)
    store.put_bytes(b"path,label\nacne/0.jpg,acne\nacne/gone.jpg,acne\n", f"{uri}/partial.csv")
    m = build_manifest(f"{uri}/partial.csv", storage=store)
    assert m.records["path"].tolist() == [f"{uri}/acne/0.jpg"]
    assert m.bad[["path", "reason"]].values.tolist() == [[f"{uri}/acne/gone.jpg", "missing_file"]]


def test_s3_keys_outside_the_prefix_are_refused_and_empty_folders_reported(storage, dataset: Path) -> None:
    store, bucket = storage
    uri = f"{bucket}/ds"
    store.sync_dir_up(dataset, uri)
    for name in ("x", "y"):
        store.put_bytes((dataset / "acne" / "0.jpg").read_bytes(), f"{bucket}/private/{name}.jpg")
    store.put_bytes(b"", f"{uri}/ulcer/")  # the folder marker a console leaves for an empty folder
    store.put_bytes(
        f"path,label\nacne/0.jpg,acne\n../private/x.jpg,acne\n{bucket}/private/y.jpg,tumor\n".encode(),
        f"{uri}/escape.csv",
    )
    m = build_manifest(f"{uri}/escape.csv", storage=store)
    assert m.records["path"].tolist() == [f"{uri}/acne/0.jpg"]
    assert m.bad[["path", "reason"]].values.tolist() == [
        [f"{bucket}/private/x.jpg", "outside_root"],
        [f"{bucket}/private/y.jpg", "outside_root"],
    ]
    allowed = build_manifest(f"{uri}/escape.csv", storage=store, allow_outside_root=True)
    assert len(allowed.records) == 3 and allowed.bad.empty
    folder = build_manifest(uri, storage=store)
    assert folder.empty_classes == ["ulcer"] and "ulcer" not in folder.classes
    assert folder.bad["reason"].tolist() == ["zero_bytes"]
