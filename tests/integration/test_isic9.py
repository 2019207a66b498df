"""Real data: the isic9 dermoscopy set (../shared/data/isic9), manifest, split and a small cache."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ml.data.cache import build_cache
from ml.data.manifest import build_manifest
from ml.data.split import split_manifest

ISIC9 = Path(__file__).parents[2].parent / "shared/data/isic9"

# Per-class counts of the NOTICE.md table (train, test); they sum to 2,359 files, whereas the
# NOTICE headline says 2,357.
COUNTS = {
    "actinic_keratosis": (114, 16),
    "basal_cell_carcinoma": (378, 16),
    "dermatofibroma": (95, 16),
    "melanoma": (438, 16),
    "nevus": (357, 16),
    "pigmented_benign_keratosis": (462, 16),
    "seborrheic_keratosis": (77, 3),
    "squamous_cell_carcinoma": (181, 16),
    "vascular_lesion": (139, 3),
}

pytestmark = pytest.mark.skipif(not ISIC9.is_dir(), reason=f"real-data test: {ISIC9} is absent")


@pytest.fixture(scope="module")
def manifest():
    return build_manifest(ISIC9)


def test_manifest_of_isic9(manifest) -> None:
    assert manifest.classes == sorted(COUNTS)
    assert len(manifest.records) + len(manifest.bad) == sum(map(sum, COUNTS.values())) == 2359
    table = manifest.records.groupby(["label", "split"]).size().unstack(fill_value=0)
    bad_per_class = manifest.bad["label"].value_counts()
    for label, (train, test) in COUNTS.items():
        assert table.loc[label, "train"] + table.loc[label, "test"] + bad_per_class.get(label, 0) == train + test
    assert set(manifest.records["split"]) == {"train", "test"}
    assert len(manifest.version) == 16


def test_split_of_isic9_keeps_test_and_carves_val(manifest) -> None:
    out = split_manifest(manifest, val_frac=1 / 6, seed=0)
    given_test = set(manifest.records.loc[manifest.records["split"] == "test", "path"])
    assert set(out.records.loc[out.records["split"] == "test", "path"]) == given_test
    table = out.records.groupby(["label", "split"]).size().unstack(fill_value=0)
    assert (table["val"] > 0).all() and (table["train"] > table["val"]).all()
    leaks = out.bad[out.bad["reason"] == "duplicate_across_splits"]
    assert len(out.records) + len(leaks) == len(manifest.records)
    assert not set(leaks["path"]) & set(out.records["path"])
    assert out.version != manifest.version


def test_cache_of_a_200_image_subset(manifest, tmp_path: Path) -> None:
    records = manifest.records.groupby("label").head(23).head(200).reset_index(drop=True)
    subset = replace(manifest, records=records)
    cache = build_cache(subset, 32, tmp_path)
    assert cache.images.shape == (200, 32, 32, 3) and cache.images.dtype == np.uint8
    assert sorted(set(np.asarray(cache.labels).tolist())) == list(range(9))
    assert cache.images.std() > 10  # real pictures, not blank arrays
    assert (tmp_path / subset.version / "32" / "meta.json").is_file()
