"""ml.data.cache: shapes and dtypes, resize + centre crop, reuse without decoding, keys, decode failures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ml.data.cache import ImageCache, build_cache, resize_crop
from ml.data.images import BadImageError
from ml.data.manifest import Manifest, build_manifest

CLASSES = ("acne", "tumor", "wheal")


def banded(width: int, height: int, centre: tuple[int, int, int]) -> Image.Image:
    """Blue left quarter, ``centre`` colour in the middle half, green right quarter."""
    arr = np.zeros((height, width, 3), np.uint8)
    arr[:, : width // 4] = (0, 0, 255)
    arr[:, width // 4 : 3 * width // 4] = centre
    arr[:, 3 * width // 4 :] = (0, 255, 0)
    return Image.fromarray(arr)


@pytest.fixture()
def manifest(tmp_path: Path) -> Manifest:
    root = tmp_path / "ds"
    for ci, label in enumerate(CLASSES):
        (root / label).mkdir(parents=True)
        for i in range(6):
            banded(64 + 8 * i, 32, (200, 40 * ci, 10 * i)).save(root / label / f"{i}.png")
    return build_manifest(root)


def by_hand(manifest: Manifest) -> Manifest:
    """The manifest split by hand: images 0-3 of each class train, 4-5 val (what the cache
    tests need, independent of the split rule)."""
    from dataclasses import replace

    val = manifest.records["path"].str.rsplit("/", n=1).str[-1].isin(["4.png", "5.png"])
    return replace(manifest, records=manifest.records.assign(split=np.where(val, "val", "train")))


def test_resize_crop_keeps_the_centre() -> None:
    out = np.asarray(resize_crop(banded(64, 32, (255, 0, 0)), 16))
    assert out.shape == (16, 16, 3)
    assert (out[:, 2:-2] == (255, 0, 0)).all()
    tall = np.asarray(resize_crop(banded(32, 64, (255, 0, 0)).rotate(90, expand=True), 8))
    assert tall.shape == (8, 8, 3)


def test_cache_shapes_dtypes_and_files(manifest: Manifest, tmp_path: Path) -> None:
    cache = build_cache(manifest, 16, tmp_path / "cache")
    folder = tmp_path / "cache" / manifest.version / "16"
    assert {p.name for p in folder.iterdir()} == {"images.npy", "labels.npy", "index.csv", "meta.json"}
    assert isinstance(cache.images, np.memmap) and cache.images.mode == "r"
    assert cache.images.shape == (18, 16, 16, 3) and cache.images.dtype == np.uint8
    assert cache.labels.dtype == np.int64
    assert [cache.classes[i] for i in cache.labels] == manifest.records["label"].tolist()
    assert (cache.version, cache.size, cache.classes) == (manifest.version, 16, list(CLASSES))
    index = pd.read_csv(folder / "index.csv", keep_default_na=False)
    assert index["path"].tolist() == manifest.records["path"].tolist()
    assert json.loads((folder / "meta.json").read_text())["n"] == 18
    # the centre band of record 0 (acne, colour (200, 0, 0)) fills the crop's middle
    np.testing.assert_allclose(cache.images[0, 8, 8], (200, 0, 0), atol=2)


def test_second_call_reuses_without_decoding(manifest: Manifest, tmp_path: Path) -> None:
    decoded: list[str] = []
    build_cache(manifest, 16, tmp_path, on_decode=decoded.append)
    assert sorted(decoded) == sorted(manifest.records["path"])
    images = tmp_path / manifest.version / "16" / "images.npy"
    mtime = images.stat().st_mtime_ns

    again: list[str] = []
    cache = build_cache(manifest, 16, tmp_path, on_decode=again.append)
    assert again == [] and images.stat().st_mtime_ns == mtime
    assert cache.images.shape[0] == 18


def test_keyed_by_version_and_size(manifest: Manifest, tmp_path: Path) -> None:
    root = tmp_path / "cache"
    small = build_cache(manifest, 8, root)
    large = build_cache(manifest, 12, root)
    assert (small.images.shape[1], large.images.shape[1]) == (8, 12)
    split = by_hand(manifest)
    decoded: list[str] = []
    resplit = build_cache(split, 8, root, on_decode=decoded.append)
    assert len(decoded) == 18 and resplit.version == split.version != manifest.version
    assert sorted(p.name for p in root.iterdir()) == sorted([manifest.version, split.version])


def test_stale_or_incomplete_cache_is_rebuilt(manifest: Manifest, tmp_path: Path) -> None:
    folder = tmp_path / manifest.version / "8"
    folder.mkdir(parents=True)
    (folder / "images.npy").write_bytes(b"partial")
    cache = build_cache(manifest, 8, tmp_path)
    assert cache.images.shape == (18, 8, 8, 3)
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]


def test_subset_by_split(manifest: Manifest, tmp_path: Path) -> None:
    split = by_hand(manifest)
    cache: ImageCache = build_cache(split, 8, tmp_path)
    images, labels = cache.subset("val")
    assert images.shape == (6, 8, 8, 3) and np.bincount(labels).tolist() == [2, 2, 2]
    train_images, _ = cache.subset("train")
    assert len(train_images) == 12
    with pytest.raises(ValueError, match="no 'test' records"):
        cache.subset("test")


def test_decode_failure_names_the_file(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    (root / "acne").mkdir(parents=True)
    banded(32, 32, (1, 2, 3)).save(root / "acne" / "ok.png")
    (root / "acne" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    unchecked = build_manifest(root, check=False)
    with pytest.raises(BadImageError, match="broken.jpg") as err:
        build_cache(unchecked, 8, tmp_path / "cache")
    assert err.value.reason in {"not_an_image", "truncated", "unreadable"}
    assert not any((tmp_path / "cache").rglob("*.npy"))


def test_summary_counts_images_per_split_and_label(manifest: Manifest, tmp_path: Path) -> None:
    cache = build_cache(by_hand(manifest), 8, tmp_path)
    summary = cache.summary()
    assert list(summary.columns) == ["split", "label", "n"] and summary["n"].sum() == 18
    counts = {(s, lab): n for s, lab, n in summary.itertuples(index=False)}
    assert counts == {(s, lab): 4 if s == "train" else 2 for s in ("train", "val") for lab in CLASSES}
