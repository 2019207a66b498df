"""ml.data.duplicates: the one near-duplicate search shared by the split and validation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import yaml
from PIL import Image

from ml.data.duplicates import exact_pairs, groups_from_pairs, hash_array, near_pairs, phash, policy_max_distance
from ml.data.split import duplicate_groups
from ml.quality.validation import duplicate_pairs, load_policy


def test_near_pairs_match_brute_force_hamming() -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, size=40, dtype=np.uint64)
    flips = np.array([1 << int(b) for b in rng.integers(0, 64, size=40)], dtype=np.uint64)
    hashes = np.concatenate([base, base[:20] ^ flips[:20]])  # 20 pairs at distance 1
    i, j, d = near_pairs(hashes, max_distance=3)
    brute = {
        (a, b, bin(int(hashes[a]) ^ int(hashes[b])).count("1"))
        for a in range(len(hashes))
        for b in range(a + 1, len(hashes))
        if bin(int(hashes[a]) ^ int(hashes[b])).count("1") <= 3
    }
    assert set(zip(i.tolist(), j.tolist(), d.tolist())) == brute
    assert len(brute) >= 20


def test_groups_are_connected_components_numbered_by_first_member() -> None:
    rows, cols = exact_pairs(["a", "b", "a", "c", "b"])
    assert groups_from_pairs(5, rows, cols).tolist() == [0, 1, 0, 2, 1]
    assert groups_from_pairs(4, np.array([3]), np.array([1])).tolist() == [0, 1, 2, 1]


def test_split_and_validation_share_the_policy_threshold(tmp_path) -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    paths = []
    for k, arr in enumerate(
        [img, np.clip(img.astype(int) + 12, 0, 255).astype(np.uint8), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)]
    ):
        path = tmp_path / f"{k}.png"
        Image.fromarray(arr).save(path)
        paths.append(str(path))
    hexes = [phash(Image.open(p).convert("RGB")) for p in paths]
    d01 = bin(int(hexes[0], 16) ^ int(hexes[1], 16)).count("1")
    assert d01 >= 1
    assert d01 < bin(int(hexes[0], 16) ^ int(hexes[2], 16)).count("1")
    policy = load_policy()
    assert policy_max_distance() == policy["duplicates_leakage"]["phash_max_distance"]
    features = pd.DataFrame({"decode_ok": True, "phash": hexes, "sha256": ["x", "y", "z"]})
    for threshold in (d01, d01 - 1):
        policy["duplicates_leakage"]["phash_max_distance"] = threshold
        custom = tmp_path / f"policy{threshold}.yaml"
        custom.write_text(yaml.safe_dump(policy))
        groups = duplicate_groups(paths, max_distance=policy_max_distance(custom))
        pairs = duplicate_pairs(features, policy_max_distance(custom))
        same_group = groups[0] == groups[1]
        assert same_group == (threshold >= d01)
        assert same_group == (((pairs["i"] == 0) & (pairs["j"] == 1)).any())
    np.testing.assert_array_equal(duplicate_groups(paths), duplicate_groups(paths, max_distance=policy_max_distance()))
    assert hash_array(hexes).dtype == np.uint64
