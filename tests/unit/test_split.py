"""ml.data.split: duplicate groups (exact and near), no straddling, stratification, seeds, clear errors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml.data.manifest import Manifest, build_manifest
from ml.data.split import duplicate_groups, split_manifest

CLASSES = ("acne", "blister", "tumor", "wheal")


def smooth_image(seed: int, size: int = 32) -> Image.Image:
    """Random low-frequency content, like a photo at thumbnail size (gives distinct perceptual hashes)."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    return small.resize((size, size), Image.Resampling.BICUBIC)


def make_folder(root: Path, per_class: dict[str, int]) -> Path:
    for ci, (label, n) in enumerate(per_class.items()):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            smooth_image(1000 * ci + i).save(root / label / f"{i:02d}.jpg", quality=95)
    return root


def reencoded(path: Path, quality: int = 60) -> bytes:
    buf = io.BytesIO()
    Image.open(path).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture()
def with_duplicates(tmp_path: Path) -> tuple[Manifest, dict[str, str]]:
    """12 images per class plus an exact copy, a re-encoded copy and a resized copy across classes."""
    root = make_folder(tmp_path / "ds", dict.fromkeys(CLASSES, 12))
    (root / "blister" / "copy_of_acne_00.jpg").write_bytes((root / "acne" / "00.jpg").read_bytes())
    (root / "wheal" / "reenc_of_tumor_01.jpg").write_bytes(reencoded(root / "tumor" / "01.jpg"))
    Image.open(root / "wheal" / "02.jpg").resize((40, 40)).save(root / "acne" / "resized_of_wheal_02.png")
    pairs = {"blister/copy_of_acne_00.jpg": "acne/00.jpg", "wheal/reenc_of_tumor_01.jpg": "tumor/01.jpg",
             "acne/resized_of_wheal_02.png": "wheal/02.jpg"}
    return build_manifest(root), pairs


def _rel(m: Manifest) -> list[str]:
    return [Path(p).relative_to(m.source).as_posix() for p in m.records["path"]]


def test_duplicate_groups_join_exact_and_near_copies(with_duplicates) -> None:
    m, pairs = with_duplicates
    groups = duplicate_groups(m.records)
    by_path = dict(zip(_rel(m), groups, strict=True))
    for copy, original in pairs.items():
        assert by_path[copy] == by_path[original], copy
    assert len(np.unique(groups)) == len(m.records) - len(pairs)
    first_seen = [g for i, g in enumerate(groups) if g not in groups[:i]]
    assert first_seen == sorted(first_seen)


def test_exact_only_grouping_and_path_input(with_duplicates) -> None:
    m, _ = with_duplicates
    exact = duplicate_groups(m.records, max_distance=None)
    assert len(np.unique(exact)) == len(m.records) - 1
    from_paths = duplicate_groups(m.records["local_path"].tolist())
    np.testing.assert_array_equal(from_paths, duplicate_groups(m.records))


def test_no_duplicate_group_straddles_splits(with_duplicates) -> None:
    m, pairs = with_duplicates
    out = split_manifest(m, val_frac=0.25, test_frac=0.25, seed=3, keep_existing=False)
    split_of = dict(zip(_rel(out), out.records["split"], strict=True))
    for copy, original in pairs.items():
        assert split_of[copy] == split_of[original]
    groups = duplicate_groups(out.records)
    per_group = out.records.groupby(groups)["split"].nunique()
    assert (per_group == 1).all()
    assert set(out.records["split"]) == {"train", "val", "test"}


def test_stratification_within_one_per_class(tmp_path: Path) -> None:
    sizes = {"acne": 30, "blister": 13, "tumor": 7, "wheal": 19}
    m = build_manifest(make_folder(tmp_path / "ds", sizes))
    out = split_manifest(m, val_frac=1 / 6, test_frac=0.2, seed=0)
    table = out.records.groupby(["label", "split"]).size().unstack(fill_value=0)
    for label, n in sizes.items():
        assert abs(table.loc[label, "val"] - n / 6) <= 1, label
        assert abs(table.loc[label, "test"] - n * 0.2) <= 1, label
        assert table.loc[label].sum() == n
    assert len(out.records) == len(m.records) and out.bad.empty


def test_seeded_and_deterministic(with_duplicates) -> None:
    m, _ = with_duplicates
    a = split_manifest(m, seed=1, keep_existing=False)
    b = split_manifest(m, seed=1, keep_existing=False)
    c = split_manifest(m, seed=2, keep_existing=False)
    assert a.records["split"].tolist() == b.records["split"].tolist()
    assert a.version == b.version
    assert a.records["split"].tolist() != c.records["split"].tolist()
    assert a.version != c.version != m.version


def test_existing_splits_are_kept_and_val_is_carved_from_train(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    make_folder(root / "train", dict.fromkeys(CLASSES, 12))
    for ci, label in enumerate(CLASSES):
        (root / "test" / label).mkdir(parents=True)
        for i in range(2):
            smooth_image(50_000 + 10 * ci + i).save(root / "test" / label / f"t{i}.jpg", quality=95)
    leak = root / "train" / "tumor" / "leak.jpg"
    leak.write_bytes((root / "test" / "acne" / "t0.jpg").read_bytes())
    m = build_manifest(root)
    out = split_manifest(m, val_frac=0.25)

    before = m.records.set_index("path")["split"]
    after = out.records.set_index("path")["split"]
    given_test = before[before == "test"].index
    assert len(given_test) == 8 and (after[given_test] == "test").all()
    assert out.records.groupby(["label", "split"]).size().unstack()["val"].tolist() == [3, 3, 3, 3]
    assert out.bad[["path", "reason"]].values.tolist() == [[str(leak), "duplicate_across_splits"]]
    assert str(leak) not in set(out.records["path"])
    assert "t0.jpg" in out.bad["message"].iloc[0]


def test_a_class_too_small_is_named(tmp_path: Path) -> None:
    m = build_manifest(make_folder(tmp_path / "ds", {"acne": 10, "tumor": 2}))
    with pytest.raises(ValueError, match="class 'tumor' has 2 image"):
        split_manifest(m, val_frac=0.2, test_frac=0.2)
    assert set(split_manifest(m, val_frac=0.2).records.query("label == 'tumor'")["split"]) == {"train", "val"}


def test_copies_count_as_one_group_when_sizing(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "ds", {"acne": 10, "tumor": 1})
    original = (root / "tumor" / "00.jpg").read_bytes()
    for i in range(3):
        (root / "tumor" / f"copy{i}.jpg").write_bytes(original)
    m = build_manifest(root)
    with pytest.raises(ValueError, match="class 'tumor' has 4 image.*1 duplicate group"):
        split_manifest(m, val_frac=0.2)


def test_fractions_are_validated(with_duplicates) -> None:
    m, _ = with_duplicates
    with pytest.raises(ValueError, match="sum below 1"):
        split_manifest(m, val_frac=0.6, test_frac=0.5)
