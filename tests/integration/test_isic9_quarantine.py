"""Real data, issue #23: isic9 (../shared/data/isic9) holds 155 pictures filed under two classes.
Validated as the retrain loop validates it (the split manifest), the label-conflict check fails; with
the shipped quarantine every copy is set aside (310 files, each group one picture under two labels),
the label-conflict check of the files left passes, and what the data then lacks is said plainly:
seborrheic_keratosis keeps 2 of its 80 files (78 are copies of melanoma pictures), so class balance
now fails; a policy that also lists small_classes takes the class out whole and validation passes. The features are cached in pytest's cache folder (keyed by every row they cover), so only
a cold run computes them (about a minute on 2 cores)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ml.data.manifest import Manifest, build_manifest
from ml.data.split import split_manifest
from ml.quality.features import compute_features_cached
from ml.quality.quarantine import quarantine
from ml.quality.validation import load_policy, validate_features


@pytest.fixture(scope="module")
def validated(isic9: Path, request) -> dict:
    """The split manifest the retrain loop validates (DataConfig's fractions and seed), its features
    and the validation report with the shipped policy."""
    manifest = split_manifest(build_manifest(isic9), val_frac=1 / 6, test_frac=0.2, seed=0)
    cache = request.config.cache.mkdir("isic9-features")
    features = compute_features_cached(manifest.all_files(), manifest.version, cache, workers=2)
    policy = load_policy()
    return {
        "manifest": manifest,
        "features": features,
        "policy": policy,
        "report": validate_features(features, policy, manifest.expected_classes),
    }


def test_isic9_label_conflicts_are_quarantined_and_the_rest_rechecked(validated, isic9, tmp_path) -> None:
    manifest, report = validated["manifest"], validated["report"]
    assert {f"{r.suite}:{r.check}" for r in report.critical_failures} == {"duplicates_leakage:label_conflicts"}
    held = quarantine(manifest, validated["features"], report, validated["policy"], tmp_path / "versions")
    files = held.files
    assert len(files) == 310 and files["group"].nunique() == 155 and set(files["reason"]) == {"label_conflicts"}
    pairs = files.groupby("group")["label"].apply(lambda s: tuple(sorted(s))).value_counts().to_dict()
    assert pairs == {("melanoma", "seborrheic_keratosis"): 78, ("actinic_keratosis", "nevus"): 77}
    # copies the split already left out (a training twin of a test picture) are listed, not dropped
    left_out = files[files["note"].str.contains("left out already: duplicate_across_splits")]
    assert len(left_out) == 18 and not set(left_out["path"]) & set(held.manifest.bad["path"])
    # the new version: exactly the parent's files less those, its parent named, written where asked
    assert set(held.manifest.records["path"]) == set(manifest.records["path"]) - set(files["path"])
    assert Manifest.load(held.manifest_path).parent_version == manifest.version
    assert all(str(p).startswith(str(isic9)) for p in files["path"])  # listed where they are, not copied
    assert not list(isic9.rglob("quarantine.csv")) and held.manifest_path.is_relative_to(tmp_path)
    # the files left: no label conflict any more; the class it nearly empties fails balance instead
    recheck = validate_features(held.features, validated["policy"], held.expected_classes)
    assert recheck.outcome("label_conflicts").success
    counts = recheck.outcome("min_per_class").details["values"]
    assert counts["seborrheic_keratosis"] == 2
    assert {r.check for r in recheck.critical_failures} == {"min_per_class", "imbalance_ratio", "kl_divergence"}


def test_isic9_with_small_classes_quarantined_drops_seborrheic_keratosis_whole(validated, tmp_path) -> None:
    """A team that lists ``small_classes`` after ``label_conflicts`` trains without the class the
    conflicts emptied: its 2 remaining files go too (their reason says why), the class is no longer
    expected, and the class-count check passes on the files left."""
    policy = {**validated["policy"], "quarantine": ["label_conflicts", "small_classes"]}
    held = quarantine(validated["manifest"], validated["features"], validated["report"], policy, tmp_path / "v")
    small = held.files[held.files["reason"].str.contains("small_classes")]
    assert set(small["label"]) == {"seborrheic_keratosis"} and len(small) == 2
    assert small["note"].str.contains("2 usable image").all()
    assert len(held.files) == 312 and "seborrheic_keratosis" not in held.expected_classes
    assert "seborrheic_keratosis" not in set(held.manifest.records["label"])
    recheck = validate_features(held.features, policy, held.expected_classes)
    assert recheck.outcome("min_per_class").success and recheck.outcome("classes_present").success
    assert not recheck.critical_failures, "the loop goes on past validation"
