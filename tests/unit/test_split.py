"""ml.data.split: duplicate groups (exact and near), no straddling, stratification, seeds, clear errors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml.data.manifest import Manifest, build_manifest
from ml.data.split import duplicate_groups, group_units, split_digests, split_manifest

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
    pairs = {
        "blister/copy_of_acne_00.jpg": "acne/00.jpg",
        "wheal/reenc_of_tumor_01.jpg": "tumor/01.jpg",
        "acne/resized_of_wheal_02.png": "wheal/02.jpg",
    }
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


def test_stratification_per_class(tmp_path: Path) -> None:
    """Each class gets its fractions in expectation (binomial counts: within 3 SDs, + 1 for the
    fill-up), and at least one image in every split, for every seed."""
    sizes = {"acne": 30, "blister": 13, "tumor": 7, "wheal": 19}
    m = build_manifest(make_folder(tmp_path / "ds", sizes))
    for seed in range(4):
        out = split_manifest(m, val_frac=1 / 6, test_frac=0.2, seed=seed)
        table = out.records.groupby(["label", "split"]).size().unstack(fill_value=0)
        for label, n in sizes.items():
            for split, frac in (("val", 1 / 6), ("test", 0.2)):
                assert 1 <= table.loc[label, split], (seed, label, split)
                assert abs(table.loc[label, split] - n * frac) <= 3 * (n * frac * (1 - frac)) ** 0.5 + 1, (seed, label)
            assert table.loc[label, "train"] >= 1 and table.loc[label].sum() == n
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
    val = out.records.groupby(["label", "split"]).size().unstack()["val"]
    assert (val >= 1).all() and abs(val.sum() - 0.25 * 48) <= 3 * (48 * 0.25 * 0.75) ** 0.5
    assert set(before[after[after == "val"].index]) == {"train"}, "val is carved from the source's train"
    assert out.bad[["path", "reason"]].values.tolist() == [[str(leak), "duplicate_across_splits"]]
    assert str(leak) not in set(out.records["path"])
    assert "t0.jpg" in out.bad["message"].iloc[0]


def test_a_class_too_small_is_named(tmp_path: Path) -> None:
    m = build_manifest(make_folder(tmp_path / "ds", {"acne": 10, "tumor": 2}))
    with pytest.raises(ValueError, match="class 'tumor' has 2 image"):
        split_manifest(m, val_frac=0.2, test_frac=0.2)
    assert set(split_manifest(m, val_frac=0.2).records.query("label == 'tumor'")["split"]) == {"train", "val"}


def test_every_class_too_small_is_named(tmp_path: Path) -> None:
    m = build_manifest(make_folder(tmp_path / "ds", {"acne": 10, "tumor": 2, "ulcer": 1}))
    with pytest.raises(ValueError, match="2 classes are too small") as err:
        split_manifest(m, val_frac=0.2, test_frac=0.2)
    assert "class 'tumor' has 2 image" in str(err.value) and "class 'ulcer' has 1 image" in str(err.value)
    assert "acne" not in str(err.value)


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


# --- stability across dataset versions -------------------------------------------------------------

V1_PER_CLASS, ADDED_PER_CLASS, REMOVED_PER_CLASS = 32, 8, 2


def _copy_version(src: Path, dst: Path, rel_paths: list[str]) -> Path:
    for rel in rel_paths:
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        (dst / rel).write_bytes((src / rel).read_bytes())
    return dst


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory) -> tuple[Manifest, Manifest, set[str]]:
    """Version 1: 32 synthetic images a class with exact and near copies of some; version 2: the
    same minus 2 images a class (and their copies), plus 8 new images a class (25%, with their own
    copies) and new exact copies of old images. Returns ``(v1, v2, paths added in v2)``."""
    import pandas as pd

    from ml.data.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("versions")
    pool = root / "generated"
    generate(
        pool,
        SynthConfig(
            per_class=V1_PER_CLASS + ADDED_PER_CLASS, size=32, seed=0, duplicate_rate=0.1, near_duplicate_rate=0.05
        ),
        progress=False,
    )
    meta = pd.read_csv(pool / "synth_meta.csv", keep_default_na=False)
    index = {p: int(Path(p).stem.rsplit("_", 1)[1]) for p in meta["path"]}
    originals = meta[meta["kind"] == "image"]
    copies = meta[meta["kind"] != "image"]
    old = {p for p in originals["path"] if index[p] < V1_PER_CLASS}
    removed = {p for p in old if index[p] in (3, 17)}
    new = {p for p in originals["path"] if index[p] >= V1_PER_CLASS}
    old_copies = copies[copies["duplicate_of"].isin(old)]
    # copies of old images: the near ones and half of the exact ones in v1, the other exact ones new in v2
    later = set(old_copies[(old_copies["kind"] == "duplicate") & (old_copies.index % 2 == 0)]["path"])
    v1_paths = old | (set(old_copies["path"]) - later)
    v2_paths = (
        (v1_paths - removed - set(copies[copies["duplicate_of"].isin(removed)]["path"]))
        | new
        | set(copies[copies["duplicate_of"].isin(new)]["path"])
        | (later - set(copies[copies["duplicate_of"].isin(removed)]["path"]))
    )
    v1 = build_manifest(_copy_version(pool, root / "v1", sorted(v1_paths)))
    v2 = build_manifest(_copy_version(pool, root / "v2", sorted(v2_paths)))
    return v1, v2, v2_paths - v1_paths


def _interval_splits(m: Manifest, seed: int, val_frac: float, test_frac: float) -> dict[str, str]:
    """Each record's split by its group's u alone (before any fill-up of an empty split)."""
    units = group_units(m.records["sha256"].tolist(), duplicate_groups(m.records), seed)
    split = np.where(units < test_frac, "test", np.where(units < test_frac + val_frac, "val", "train"))
    return dict(zip(_rel(m), split, strict=True))


def test_a_later_version_keeps_every_surviving_image_in_its_split(two_versions) -> None:
    v1, v2, added = two_versions
    assert len(added) >= 0.25 * V1_PER_CLASS * len(set(v1.records["label"]))
    fracs = {"val_frac": 1 / 6, "test_frac": 0.2}
    s1 = split_manifest(v1, seed=0, keep_existing=False, **fracs)
    s2 = split_manifest(v2, seed=0, keep_existing=False, **fracs)
    _assert_survivors_kept(s1, s2, seed=0, **fracs)
    # duplicates (old ones and copies new in v2) still never straddle
    assert (s2.records.groupby(duplicate_groups(s2.records))["split"].nunique() == 1).all()
    # per-class proportions: each split's count per class within 3 binomial SDs (+1 for the
    # fill-up of an empty split) of its fraction, every class in every split, overall within 0.05
    table = s2.records.groupby(["label", "split"]).size().unstack(fill_value=0)
    n = table.sum(axis=1)
    for split, frac in (("test", fracs["test_frac"]), ("val", fracs["val_frac"])):
        tolerance = 3 * np.sqrt(n * frac * (1 - frac)) + 1
        assert ((table[split] - n * frac).abs() <= tolerance).all(), (split, table)
        assert (table[split] >= 1).all()
        assert abs(table[split].sum() / n.sum() - frac) <= 0.05, (split, table[split].sum(), n.sum())


def _assert_survivors_kept(s1: Manifest, s2: Manifest, seed: int, val_frac: float, test_frac: float) -> None:
    """Every image in both versions has the same split in both, but for the one exception: a class
    whose groups left a split empty by the intervals got the nearest group moved there, and a later
    version where the class has a group of its own there sends it back to its interval's split."""
    before = dict(zip(_rel(s1), s1.records["split"], strict=True))
    after = dict(zip(_rel(s2), s2.records["split"], strict=True))
    surviving = set(before) & set(after)
    assert len(surviving) >= len(before) - REMOVED_PER_CLASS * 2 * 10
    moved = {p for p in surviving if before[p] != after[p]}
    by_interval = _interval_splits(s1, seed, val_frac, test_frac)
    filled = {p for p, s in before.items() if by_interval[p] != s}
    assert len(filled) <= 2
    assert moved <= filled, f"{len(moved - filled)} of {len(surviving)} surviving images changed split"
    assert all(by_interval[p] == after[p] for p in moved)


def test_another_seed_gives_another_stable_split(two_versions) -> None:
    v1, v2, _ = two_versions
    fracs = {"val_frac": 0.2, "test_frac": 0.2}
    a1, b1 = (split_manifest(v1, seed=s, keep_existing=False, **fracs) for s in (0, 1))
    assert a1.records["split"].tolist() != b1.records["split"].tolist()
    _assert_survivors_kept(b1, split_manifest(v2, seed=1, keep_existing=False, **fracs), seed=1, **fracs)


def test_changing_val_frac_leaves_test_alone(two_versions) -> None:
    v1, _, _ = two_versions
    splits = {f: split_manifest(v1, val_frac=f, test_frac=0.2, keep_existing=False) for f in (1 / 6, 0.25)}
    tests = [{p for p, s in zip(_rel(m), m.records["split"], strict=True) if s == "test"} for m in splits.values()]
    filled = set()  # records a fill-up moved (see _assert_survivors_kept): the only ones that may differ
    for f, m in splits.items():
        by_interval = _interval_splits(m, 0, f, 0.2)
        filled |= {p for p, s in zip(_rel(m), m.records["split"], strict=True) if by_interval[p] != s}
    assert len(tests[0]) > 50 and tests[0] ^ tests[1] <= filled


def test_split_digests_follow_the_record_order(with_duplicates) -> None:
    m, _ = with_duplicates
    out = split_manifest(m, val_frac=0.25, test_frac=0.25, keep_existing=False)
    test = out.records[out.records["split"] == "test"]
    assert split_digests(out, "test") == test["sha256"].tolist() and len(test) > 0
    assert sorted(split_digests(out, ["train", "val"])) == sorted(out.records.query("split != 'test'")["sha256"])
