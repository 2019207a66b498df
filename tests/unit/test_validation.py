"""GX suites on synthetic sets with known defects: each defect is caught by its expectation."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from PIL import Image

from ml.data.synth import LABELS, SynthConfig, generate
from ml.quality.features import compute_features
from ml.quality.validation import cramers_v, load_policy, validate_features

CLASSES = list(LABELS)
PER_CLASS = 12


def _synth_features(out: Path, **cfg: object) -> pd.DataFrame:
    generate(out, SynthConfig(per_class=PER_CLASS, size=64, seed=0, **cfg), progress=False)
    meta = pd.read_csv(out / "synth_meta.csv")
    records = pd.DataFrame({"path": [str(out / p) for p in meta["path"]], "label": meta["label"]})
    records["split"] = np.where(meta.groupby("label").cumcount() % 6 == 0, "val", "train")
    return compute_features(records, workers=1)


def _extra(rows: list[tuple[Path, str, str]]) -> pd.DataFrame:
    """Features of extra files given as (path, label, split)."""
    return compute_features(pd.DataFrame(rows, columns=["path", "label", "split"]).astype({"path": str}), workers=1)


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    return _synth_features(tmp_path_factory.mktemp("clean") / "ds")


@pytest.fixture(scope="module")
def policy() -> dict:
    return load_policy()


def _first(features: pd.DataFrame, label: str, split: str = "train") -> Path:
    return Path(features[(features["label"] == label) & (features["split"] == split)]["path"].iloc[0])


def test_clean_set_passes_every_expectation_and_builds_data_docs(clean, policy, tmp_path):
    report = validate_features(clean, policy, CLASSES, tmp_path / "docs")
    failed = [(r.check, r.observed) for r in report.results if not r.success]
    assert failed == []
    assert report.passed and not report.warnings
    assert {r.suite for r in report.results} == {
        "integrity",
        "class_balance",
        "confounders",
        "duplicates_leakage",
        "skin_tone",
    }
    assert report.outcome("kl_divergence").observed == pytest.approx(0.0, abs=1e-9)
    assert report.outcome("imbalance_ratio").observed == 1.0
    assert report.data_docs_index == tmp_path / "docs" / "index.html"
    assert report.data_docs_index.is_file()
    pages = list((tmp_path / "docs" / "validations").rglob("*.html"))
    assert len(pages) >= 4  # one GX suite per concern at least
    assert report.label_conflicts.empty and report.leaking_pairs.empty


def test_pen_marks_in_one_class_fail_share_and_association(policy, tmp_path):
    feats = _synth_features(tmp_path / "pen", pen_rate={"acne": 1.0})
    report = validate_features(feats, policy, CLASSES, None)
    share = report.outcome("flagged_share_per_class")
    assert not share.success
    # synth draws some pens off-frame (4 of 12 acne images here carry no visible mark)
    assert share.observed == share.details["values"]["acne"] >= 0.5
    assert max(v for k, v in share.details["values"].items() if k != "acne") <= 0.1
    assoc = report.outcome("association:confounder_flag")
    assert not assoc.success and assoc.observed > 0.5
    assert assoc.observed == pytest.approx(cramers_v(feats["confounder_flag"], feats["label"]))
    assert report.passed  # confounders warn by policy
    assert {w.check for w in report.warnings} == {"flagged_share_per_class", "association:confounder_flag"}


def test_metadata_association_is_generic(clean, policy):
    feats = clean.assign(device=np.where(clean["label"] == "ulcer", "phone", "dermatoscope"))
    report = validate_features(feats, policy, CLASSES, None)
    assert not report.outcome("association:device").success
    assert report.outcome("association:device").observed > 0.9
    assert "association:source" not in {r.check for r in report.results}


def test_strong_imbalance_fails_ratio_min_and_kl(clean, policy):
    keep = clean.groupby("label").cumcount() < np.where(clean["label"].isin(CLASSES[:5]), PER_CLASS, 1)
    feats = clean[keep]
    report = validate_features(feats, policy, CLASSES, None)
    assert report.outcome("imbalance_ratio").observed == PER_CLASS
    assert report.outcome("min_per_class").observed == 1
    counts = feats["label"].value_counts().reindex(CLASSES).to_numpy()
    kl = scipy.stats.entropy(counts / counts.sum(), np.full(len(CLASSES), 1 / len(CLASSES)))
    assert report.outcome("kl_divergence").observed == pytest.approx(kl)
    assert {r.check for r in report.critical_failures} == {"imbalance_ratio", "min_per_class", "kl_divergence"}
    assert not report.passed


def test_duplicates_across_splits_are_leakage(clean, policy, tmp_path):
    src = _first(clean, "acne")
    exact = tmp_path / "exact.jpg"
    shutil.copyfile(src, exact)
    buf = io.BytesIO()
    Image.open(_first(clean, "tumor")).save(buf, "JPEG", quality=60)
    near = tmp_path / "near.jpg"
    near.write_bytes(buf.getvalue())
    feats = pd.concat([clean, _extra([(exact, "acne", "val"), (near, "tumor", "val")])], ignore_index=True)
    report = validate_features(feats, policy, CLASSES, None)
    leak = report.outcome("cross_split_leakage")
    assert not leak.success and leak.observed == 2
    pairs = report.leaking_pairs
    assert set(zip(pairs["path_a"], pairs["path_b"], pairs["kind"])) == {
        (str(src), str(exact), "exact"),
        (str(_first(clean, "tumor")), str(near), "near"),
    }
    assert (pairs["distance"] <= policy["duplicates_leakage"]["phash_max_distance"]).all()
    assert report.outcome("label_conflicts").success


def test_the_same_picture_with_other_exif_under_two_labels_is_a_label_conflict(clean, policy, tmp_path):
    """Bytes differ (an EXIF block), pixels do not: the same image, so a label conflict, not a
    near-duplicate warning."""
    from PIL import Image

    pixels = Image.open(_first(clean, "acne")).convert("RGB")
    plain, tagged = tmp_path / "plain.jpg", tmp_path / "tagged.jpg"
    pixels.save(plain, "JPEG", quality=90)
    exif = Image.Exif()
    exif[0x010F] = "another camera"  # Make
    pixels.save(tagged, "JPEG", quality=90, exif=exif.tobytes())
    assert plain.read_bytes() != tagged.read_bytes()
    feats = pd.concat([clean, _extra([(plain, "acne", "train"), (tagged, "blister", "train")])], ignore_index=True)
    report = validate_features(feats, policy, CLASSES, None)
    assert not report.outcome("label_conflicts").success
    assert set(report.label_conflicts["path"]) == {str(plain), str(tagged)}


def test_same_bytes_under_two_labels_is_a_label_conflict(clean, policy, tmp_path):
    src = _first(clean, "acne")
    copy = tmp_path / "copy.jpg"
    shutil.copyfile(src, copy)
    feats = pd.concat([clean, _extra([(copy, "blister", "train")])], ignore_index=True)
    report = validate_features(feats, policy, CLASSES, None)
    conflict = report.outcome("label_conflicts")
    assert not conflict.success and conflict.observed == 1
    assert conflict.details["unexpected"] == [feats.loc[feats["path"] == str(copy), "pixel_sha256"].item()]
    assert set(zip(report.label_conflicts["path"], report.label_conflicts["label"])) == {
        (str(src), "acne"),
        (str(copy), "blister"),
    }
    assert report.outcome("cross_split_leakage").success  # same split: a conflict, not a leak
    assert not report.passed


def test_corrupt_files_fail_integrity(clean, policy, tmp_path):
    good = _first(clean, "ulcer").read_bytes()
    files = {"truncated.jpg": good[: len(good) // 2], "empty.jpg": b"", "text.jpg": b"not an image at all"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    extra = _extra([(tmp_path / n, "ulcer", "train") for n in files])
    report = validate_features(pd.concat([clean, extra], ignore_index=True), policy, CLASSES, None)
    decodes = report.outcome("decodes")
    assert not decodes.success and decodes.observed == 3
    assert sorted(decodes.details["unexpected"]) == sorted(str(tmp_path / n) for n in files)
    assert report.outcome("bytes_positive").observed == 1
    assert report.outcome("bytes_positive").details["unexpected"] == [str(tmp_path / "empty.jpg")]
    assert all(report.outcome(c).success for c in ("mode_allowed", "min_side", "format_allowed"))
    assert not report.passed


def test_small_foreign_format_and_unknown_label_fail_integrity(clean, policy, tmp_path):
    Image.new("RGB", (32, 48), (200, 150, 120)).save(tmp_path / "small.png")
    Image.new("RGB", (80, 80), (200, 150, 120)).save(tmp_path / "odd.gif")
    Image.new("F", (80, 80), 0.5).save(tmp_path / "float.tif")
    extra = _extra(
        [
            (tmp_path / "small.png", "acne", "train"),
            (tmp_path / "odd.gif", "mystery", "train"),
            (tmp_path / "float.tif", "acne", "train"),
        ]
    )
    report = validate_features(pd.concat([clean, extra], ignore_index=True), policy, CLASSES, None)
    expected = {
        "min_side": [str(tmp_path / "small.png")],
        "format_allowed": [str(tmp_path / "odd.gif")],
        "labels_known": [str(tmp_path / "odd.gif")],
        "mode_allowed": [str(tmp_path / "float.tif")],
    }
    for check, paths in expected.items():
        outcome = report.outcome(check)
        assert not outcome.success and outcome.observed == len(paths), check
        assert sorted(outcome.details["unexpected"]) == paths, check
    assert report.outcome("decodes").success


def test_cramers_v_values():
    a = pd.Series(["x"] * 30 + ["y"] * 30)
    assert cramers_v(a, a, bias_correction=False) == pytest.approx(1.0)
    assert cramers_v(a, pd.Series(["p", "q"] * 30), bias_correction=False) == pytest.approx(0.0)
    assert cramers_v(a, pd.Series(["only"] * 60)) == 0.0
    labels = pd.Series(np.repeat(CLASSES, 6))
    one_flag = pd.Series([True] + [False] * 59)
    assert cramers_v(one_flag, labels, bias_correction=False) == pytest.approx(np.sqrt(54 / (6 * 59)))
    assert cramers_v(one_flag, labels) < 0.05


def test_report_serialises_and_policy_is_commented(clean, policy):
    report = validate_features(clean, policy, CLASSES, None)
    frame = report.to_frame()
    assert list(frame.columns[:3]) == ["suite", "check", "expectation"] and len(frame) == len(report.results)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["passed"] is True and len(data["results"]) == len(report.results)
    text = Path(__file__).resolve().parents[2].joinpath("policies", "validation.yaml").read_text()
    leaves = [ln for ln in text.splitlines() if ":" in ln.split("#")[0] and ln.split("#")[0].split(":", 1)[1].strip()]
    assert leaves and all("#" in ln for ln in leaves)
    assert policy["duplicates_leakage"]["phash_max_distance"] == 4


def test_html_summary_is_self_contained_and_lists_every_result(tmp_path):
    """The summary opens offline: no external assets, one row per expectation, failures marked."""
    import re

    from ml.data.manifest import build_manifest
    from ml.data.synth import SynthConfig, generate
    from ml.quality.features import compute_features
    from ml.quality.validation import load_policy, validate_features

    generate(tmp_path / "ds", SynthConfig(per_class=4, size=64, seed=0, corrupt=1), progress=False)
    m = build_manifest(str(tmp_path / "ds"))
    records = pd.concat([m.records, m.bad.assign(split="unassigned", local_path=m.bad["path"])], ignore_index=True)
    report = validate_features(compute_features(records, workers=1), load_policy(), m.classes)
    page = report.to_html("t")
    assert not re.search(r"(src|href)=['\"]https?://", page)
    assert page.count("<tr><td style=") == len(report.results)
    assert "FAIL" in page and "decodes" in page


def test_min_per_class_counts_usable_images_only(clean, policy, tmp_path):
    """3 usable acne images plus 8 broken and 2 left-out ones: the class has 3 images, not 13."""
    keep = (clean["label"] != "acne") | (clean.groupby("label").cumcount() < 3)
    broken = []
    for i in range(8):
        (tmp_path / f"broken_{i}.jpg").write_bytes(b"" if i % 2 else b"not an image")
        broken.append((tmp_path / f"broken_{i}.jpg", "acne", "train"))
    left_out = _extra([(_first(clean, "acne", "val"), "acne", "train")] * 2).assign(left_out="duplicate_entry")
    feats = pd.concat([clean[keep], _extra(broken), left_out], ignore_index=True)
    report = validate_features(feats, policy, CLASSES, None)
    outcome = report.outcome("min_per_class")
    assert not outcome.success and outcome.observed == 3 and outcome.details["values"]["acne"] == 3
    assert report.outcome("cross_split_leakage").success  # left-out copies are not leakage either
    assert set(report.bad_files["path"]) == {str(p) for p, _, _ in broken} | {str(_first(clean, "acne", "val"))}
    reasons = dict(zip(report.bad_files["path"], report.bad_files["reason"], strict=True))
    assert reasons[str(tmp_path / "broken_1.jpg")] == "zero_bytes"


def test_classes_promised_but_absent_and_one_class_sets_fail(clean, policy):
    acne_only = clean[clean["label"] == "acne"]
    report = validate_features(acne_only, policy, CLASSES, None)
    present = report.outcome("classes_present")
    assert not present.success and present.severity == "critical" and present.observed == len(CLASSES) - 1
    assert sorted(e["id"] for e in present.details["examples"]) == sorted(c for c in CLASSES if c != "acne")
    assert {r.check for r in report.critical_failures} >= {"classes_present", "min_classes"}

    one_class = validate_features(acne_only, policy, ["acne"], None)
    assert one_class.outcome("classes_present").success
    minimum = one_class.outcome("min_classes")
    assert (minimum.success, minimum.observed, minimum.threshold, minimum.severity) == (False, 1, 2, "critical")
    assert minimum.details["rows"] == ["acne"]
    assert not one_class.passed
    assert validate_features(clean, policy, CLASSES, None).outcome("min_classes").observed == len(CLASSES)


def test_outcomes_and_html_name_the_bad_files_and_duplicate_groups(clean, policy, tmp_path):
    from ml.quality.validation import MAX_EXAMPLES, details_lines

    names = [f"empty_{i:02d}.jpg" for i in range(MAX_EXAMPLES + 5)]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "text.jpg").write_text("no image")
    copy = tmp_path / "copy.jpg"
    shutil.copyfile(_first(clean, "ulcer"), copy)
    extra = _extra([(tmp_path / n, "ulcer", "train") for n in ["text.jpg", *names]] + [(copy, "ulcer", "train")])
    report = validate_features(pd.concat([clean, extra], ignore_index=True), policy, CLASSES, None)
    decodes = report.outcome("decodes")
    assert decodes.observed == len(names) + 1
    examples = decodes.details["examples"]
    assert len(examples) == MAX_EXAMPLES and decodes.details["n_more"] == len(names) + 1 - MAX_EXAMPLES
    reasons = {Path(e["id"]).name: e["reason"] for e in examples}
    assert reasons["text.jpg"] == "not_an_image" and reasons["empty_00.jpg"] == "zero_bytes"
    json.dumps(decodes.details)  # printable as it is
    lines = details_lines(decodes.details)
    assert f"{tmp_path / 'text.jpg'}: not_an_image" in lines and lines[-1] == "... and 6 more"

    groups = report.duplicate_groups
    assert groups[["kind", "n"]].values.tolist() == [["exact", 2]]
    assert groups["paths"].iloc[0] == [str(_first(clean, "ulcer")), str(copy)]
    assert len(report.bad_files) == len(names) + 1
    page = report.to_html()
    assert "text.jpg: not_an_image" in page and "... and 6 more" in page
    assert "Files not used (26)" in page and "Duplicate groups (1)" in page and str(copy) in page
    data = json.loads(json.dumps(report.to_dict()))
    assert data["duplicate_groups"][0]["paths"][1] == str(copy) and len(data["bad_files"]) == 26
