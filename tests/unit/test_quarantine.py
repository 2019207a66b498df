"""Quarantine (ml/quality/quarantine.py): the files a quarantined finding names are set aside into a
new dataset version that records its parent; the rest validates again; the originals are untouched."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ml.data.manifest import QUARANTINE_COLUMNS, Manifest, build_manifest
from ml.data.synth import SynthConfig, generate
from ml.policies import PolicyError
from ml.quality.features import compute_features
from ml.quality.quarantine import (
    QUARANTINABLE,
    QUARANTINE_CSV,
    files_to_quarantine,
    quarantine,
    quarantined_findings,
    remaining,
)
from ml.quality.validation import load_policy, validate_features

# one picture copied into another class folder makes a conflicting group of two
CONFLICTS = {("acne", "acne_0000.jpg"): "blister", ("tumor", "tumor_0001.jpg"): "ulcer"}


def _picture(path: Path) -> str:
    """The digest of the decoded pixels: what a label conflict's copies share."""
    from ml.quality.features import image_features

    return image_features(path)["pixel_sha256"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _features(manifest: Manifest) -> pd.DataFrame:
    return compute_features(manifest.all_files(), workers=1)


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> dict:
    """A synthetic ImageFolder (10 classes x 12, 64 px) with two conflicting groups, its manifest,
    features and validation report, and the SHA-256 of every file before anything ran."""
    root = tmp_path_factory.mktemp("quarantine") / "ds"
    generate(root, SynthConfig(per_class=12, size=64, seed=0), progress=False)
    copies = {}
    for (label, name), other in CONFLICTS.items():
        copies[root / label / name] = root / other / f"copy_of_{name}"
        shutil.copyfile(root / label / name, copies[root / label / name])
    manifest = build_manifest(root)
    features = _features(manifest)
    policy = load_policy()
    return {
        "root": root,
        "copies": copies,
        "manifest": manifest,
        "features": features,
        "policy": policy,
        "report": validate_features(features, policy, manifest.expected_classes),
        "before": {p: _sha(p) for p in root.rglob("*") if p.is_file()},
    }


def test_the_policy_names_only_quarantinable_findings(tmp_path) -> None:
    assert quarantined_findings(load_policy()) == ["label_conflicts"]  # the shipped default
    assert quarantined_findings({"quarantine": ["min_side", "label_conflicts", "min_side"]}) == [
        "min_side",
        "label_conflicts",
    ]
    assert quarantined_findings({"quarantine": []}) == quarantined_findings({"quarantine": None}) == []
    with pytest.raises(ValueError, match="'imbalance_ratio' cannot be quarantined"):
        quarantined_findings({"quarantine": ["imbalance_ratio"]})
    with pytest.raises(ValueError, match="must be a list of finding names"):
        quarantined_findings({"quarantine": "label_conflicts"})
    shipped = Path(__file__).resolve().parents[2] / "policies" / "validation.yaml"
    path = tmp_path / "validation.yaml"
    path.write_text(shipped.read_text().replace("quarantine: [label_conflicts]", "quarantine: [label_conflict]"))
    with pytest.raises(PolicyError) as exc:
        load_policy(path)
    assert str(path) in str(exc.value) and "'label_conflict' cannot be quarantined" in str(exc.value)
    assert "\n" not in str(exc.value)
    for name in QUARANTINABLE:  # every name is documented where teams read the policy
        assert name in shipped.read_text()


def test_every_copy_of_a_conflicting_group_is_named(planted) -> None:
    assert not planted["report"].outcome("label_conflicts").success
    files = files_to_quarantine(planted["features"], planted["report"], planted["policy"])
    assert list(files.columns) == QUARANTINE_COLUMNS
    pairs = {(str(src), str(copy)) for src, copy in planted["copies"].items()}
    assert set(files["path"]) == {p for pair in pairs for p in pair}
    assert set(files["reason"]) == {"label_conflicts"}
    by_group = files.groupby("group")["path"].apply(frozenset)
    assert set(by_group) == {frozenset(pair) for pair in pairs}  # each group holds one original and its copy
    for src in planted["copies"]:
        assert files.loc[files["path"] == str(src), "group"].item() == _picture(src)[:12]  # the picture they share
    acne = files.loc[files["path"] == str(planted["root"] / "acne" / "acne_0000.jpg")].iloc[0]
    assert acne["label"] == "acne" and acne["note"] == "the same picture under acne, blister"


def test_the_new_version_lacks_exactly_those_files_and_names_its_parent(planted, tmp_path) -> None:
    manifest, policy = planted["manifest"], planted["policy"]
    held = quarantine(manifest, planted["features"], planted["report"], policy, tmp_path / "versions")
    assert held is not None
    gone = set(held.files["path"])
    assert set(held.manifest.records["path"]) == set(manifest.records["path"]) - gone
    assert len(held.manifest.records) == len(manifest.records) - 4
    assert held.parent_version == held.manifest.parent_version == manifest.version != held.manifest.version
    assert held.failed_before == ["duplicates_leakage:label_conflicts"]
    assert held.line() == (
        f"4 files (label_conflicts) in 2 groups set aside: dataset version {held.manifest.version} "
        f"from {manifest.version}"
    )
    # written once, atomically, and loadable: the lineage and the list travel with it
    assert held.manifest_path.parent.parent == (tmp_path / "versions").resolve()
    loaded = Manifest.load(held.manifest_path)
    assert loaded.version == held.manifest.version and loaded.parent_version == manifest.version
    assert loaded.quarantined.equals(held.files)
    assert pd.read_csv(held.csv_path, dtype=str).fillna("").equals(held.files)
    assert held.csv_path.name == QUARANTINE_CSV
    assert loaded.summary()["quarantined"] == {"label_conflicts": 4}
    assert not list((tmp_path / "versions").glob(".*"))  # no half-built folder left beside it
    stamp = held.manifest_path.stat().st_mtime_ns
    again = quarantine(manifest, planted["features"], planted["report"], policy, tmp_path / "versions")
    assert again.manifest_path == held.manifest_path and held.manifest_path.stat().st_mtime_ns == stamp
    # the files left validate again: the conflict is gone and nothing else fails
    recheck = validate_features(held.features, policy, held.expected_classes)
    assert recheck.outcome("label_conflicts").success and recheck.passed
    assert len(held.features) == len(planted["features"]) - 4
    # the originals are neither moved, changed nor deleted
    assert {p: _sha(p) for p in planted["root"].rglob("*") if p.is_file()} == planted["before"]
    assert manifest.quarantined is None and manifest.parent_version is None


def test_the_report_of_the_files_left_names_every_file_set_aside(planted, tmp_path) -> None:
    held = quarantine(
        planted["manifest"], planted["features"], planted["report"], planted["policy"], tmp_path / "versions"
    )
    report = held.annotate(validate_features(held.features, planted["policy"], held.expected_classes))
    page = report.to_html("after quarantine")
    assert "Quarantined (4 files)" in page and planted["manifest"].version in page
    assert "duplicates_leakage:label_conflicts" in page
    assert all(str(p) in page for pair in planted["copies"].items() for p in pair)
    data = report.to_dict()
    assert len(data["quarantined"]) == 4 and data["parent_version"] == planted["manifest"].version
    assert held.summary()["by_reason"] == {"label_conflicts": 4} and held.summary()["groups"] == 2


def test_copies_the_split_left_out_go_too(planted, tmp_path) -> None:
    """A held-out copy whose training twin the split left out (duplicate_across_splits) still carries
    a doubtful label: the check sees one usable copy and passes, the quarantine sets aside both."""
    manifest = planted["manifest"]
    src, copy = next(iter(planted["copies"].items()))
    row = {"path": str(copy), "label": "blister", "reason": "duplicate_across_splits", "message": "split"}
    split = replace(
        manifest,
        records=manifest.records[manifest.records["path"] != str(copy)].reset_index(drop=True),
        bad=pd.concat([manifest.bad, pd.DataFrame([row])], ignore_index=True),
    )
    features = _features(split)
    held = quarantine(
        split,
        features,
        validate_features(features, planted["policy"], split.expected_classes),
        planted["policy"],
        tmp_path,
    )
    pair = held.files[held.files["group"] == _picture(src)[:12]].set_index("path")
    assert set(pair.index) == {str(src), str(copy)}
    assert (
        pair.loc[str(copy), "note"]
        == "the same picture under acne, blister (left out already: duplicate_across_splits)"
    )
    assert str(copy) not in set(held.manifest.bad["path"])  # listed once: set aside, not also "left out"


def test_integrity_findings_are_set_aside_only_when_the_policy_says_so(planted, tmp_path) -> None:
    root = tmp_path / "ds"
    shutil.copytree(planted["root"] / "acne", root / "acne")
    shutil.copytree(planted["root"] / "wheal", root / "wheal")
    noise = np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "wheal" / "small.jpg")
    (root / "wheal" / "broken.jpg").write_bytes(b"not a jpeg")
    manifest = build_manifest(root)
    features = _features(manifest)
    policy = planted["policy"]
    report = validate_features(features, policy, manifest.expected_classes)
    assert {r.check for r in report.critical_failures} == {"decodes", "min_side"}
    assert quarantine(manifest, features, report, policy, tmp_path / "v") is None  # default: only label conflicts
    held = quarantine(manifest, features, report, {**policy, "quarantine": ["decodes", "min_side"]}, tmp_path / "v")
    notes = dict(zip(held.files["path"], held.files["reason"] + " " + held.files["note"], strict=True))
    assert notes == {
        str(root / "wheal" / "small.jpg"): "min_side min_side=40",
        str(root / "wheal" / "broken.jpg"): "decodes not_an_image",
    }
    assert str(root / "wheal" / "broken.jpg") not in set(held.manifest.bad["path"])
    recheck = validate_features(held.features, policy, held.expected_classes)
    assert recheck.outcome("decodes").success and recheck.outcome("min_side").success


def test_a_class_that_loses_every_file_fails_again(planted, tmp_path) -> None:
    """Every wheal picture also sits in the ulcer folder: quarantine takes all of wheal, and the
    check of the files left says so (the parent's classes are still expected)."""
    root = tmp_path / "ds"
    for label in ("acne", "ulcer", "wheal"):
        shutil.copytree(planted["root"] / label, root / label)
    for path in sorted((root / "wheal").glob("*.jpg")):
        shutil.copyfile(path, root / "ulcer" / f"copy_{path.name}")
    manifest = build_manifest(root)
    features = _features(manifest)
    report = validate_features(features, planted["policy"], manifest.expected_classes)
    held = quarantine(manifest, features, report, planted["policy"], tmp_path / "v")
    assert len(held.files) == 24 and held.files["group"].nunique() == 12
    assert "wheal" not in held.manifest.classes and "wheal" in held.manifest.empty_classes
    recheck = validate_features(held.features, planted["policy"], held.expected_classes)
    assert recheck.outcome("label_conflicts").success
    assert not recheck.outcome("classes_present").success and not recheck.passed


def test_remaining_drops_rows_by_path() -> None:
    features = pd.DataFrame({"path": ["a", "b", "c"], "x": [1, 2, 3]})
    files = pd.DataFrame({"path": ["b"]})
    assert remaining(features, files)["path"].tolist() == ["a", "c"]


def test_a_class_left_too_small_by_a_quarantine_gets_the_way_through_named():
    from ml.quality.quarantine import small_class_hint

    conflicts = pd.DataFrame({"reason": ["label_conflicts"], "label": ["melanoma"]})
    hint = small_class_hint(["class_balance:min_per_class"], conflicts)
    assert "add small_classes to the validation policy's quarantine list" in hint
    assert small_class_hint(["integrity:decodes"], conflicts) == ""
    dropped = pd.DataFrame({"reason": ["label_conflicts", "small_classes"], "label": ["melanoma", "nevus"]})
    assert small_class_hint(["class_balance:min_per_class"], dropped) == ""  # a class was already taken out
