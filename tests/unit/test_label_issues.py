"""Label issues, the review page and the decisions round trip, on small arrays and a tiny image
folder (the planted-noise test on real features is tests/integration/test_label_issues.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ml.data.decisions import (
    DROP_REASON,
    DecisionError,
    apply_decisions,
    read_decisions,
    write_decided_version,
)
from ml.data.manifest import Manifest, build_manifest
from ml.quality import label_issues as li
from ml.quality.label_review import decisions_template, review_page, thumbnail_uri


def _clusters(n_per_class: int = 40, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, 16)) * 6
    labels = np.repeat(np.arange(classes), n_per_class)
    return centres[labels] + rng.normal(size=(len(labels), 16)), labels


def test_each_image_is_scored_by_a_probe_that_never_saw_it():
    features, labels = _clusters()
    flipped = labels.copy()
    flipped[5] = 2  # an image of class 0 labelled 2
    probs = li.cross_fitted_probs(features, flipped, 3)
    assert probs.shape == (120, 3) and np.allclose(probs.sum(axis=1), 1)
    # out of sample, the probe was fitted on the others: it still says class 0 (in sample it would
    # have learnt the flipped label)
    assert probs[5].argmax() == 0 and probs[5, 2] < 0.2


def test_a_class_with_one_image_cannot_be_cross_fitted():
    features, labels = _clusters()
    labels = labels.copy()
    labels[0] = 3
    with pytest.raises(ValueError, match="one image"):
        li.cross_fitted_probs(features, labels, 4)


def test_flipped_labels_copies_and_an_outlier_are_flagged_with_their_reason():
    features, labels = _clusters(seed=1)
    given = labels.copy()
    flips = [3, 50, 97]
    given[flips] = (labels[flips] + 1) % 3
    features[110] = features[110] + 25  # far from everything
    groups = np.arange(len(given))
    groups[[10, 60]] = 1000  # the same picture under classes 0 and 1
    paths = [f"img{i:03d}.jpg" for i in range(len(given))]
    classes = ["acne", "blister", "tumor"]
    probs = li.cross_fitted_probs(features, given, 3)
    issues = li.find_issues(paths, given, classes, probs, features, groups)
    assert list(issues.columns) == li.ISSUE_COLUMNS
    by_path = issues.set_index("path")
    for i in flips:
        row = by_path.loc[paths[i]]
        assert "likely_mislabelled" in row["reason"]
        assert row["given_label"] == classes[given[i]] and row["suggested_label"] == classes[labels[i]]
    assert "near_duplicate_other_label" in by_path.loc["img010.jpg", "reason"]
    assert "img060.jpg (blister)" in by_path.loc["img010.jpg", "note"]
    assert "outlier" in by_path.loc["img110.jpg", "reason"]
    assert issues["score"].is_monotonic_increasing  # worst first
    assert li.scored(issues[issues["reason"].str.contains("mislabelled")], {paths[i] for i in flips})["recall"] == 1


def test_the_noise_table_names_the_swapped_pair():
    features, labels = _clusters(n_per_class=60, seed=2)
    given = labels.copy()
    given[np.flatnonzero(labels == 0)[:12]] = 1  # twelve class-0 images labelled 1
    table = li.noise_table(given, li.cross_fitted_probs(features, given, 3), ["acne", "blister", "tumor"])
    top = table.iloc[0]
    assert (top["given_label"], top["true_label"]) == ("blister", "acne")
    assert 8 <= top["images"] <= 16


@pytest.fixture()
def folder(tmp_path):
    root = tmp_path / "data"
    for c, colour in (("acne", (200, 40, 40)), ("blister", (40, 200, 40)), ("tumor", (40, 40, 200))):
        (root / c).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (32, 32), tuple(v + 10 * i for v in colour)).save(root / c / f"{c}_{i}.png")
    return root


def _decisions(tmp_path, rows: list[dict]) -> pd.DataFrame:
    path = tmp_path / "decisions.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return read_decisions(path)


def test_decisions_make_a_version_that_differs_exactly_by_them(folder, tmp_path):
    manifest = build_manifest(folder)
    p = {n: str(folder / n.split("_")[0] / f"{n}.png") for n in ("acne_0", "acne_1", "blister_2", "tumor_3")}
    table = _decisions(
        tmp_path,
        [
            {
                "path": p["acne_0"],
                "given_label": "acne",
                "decision": "relabel",
                "new_label": "tumor",
                "who": "dr a",
                "why": "nodule",
            },
            {
                "path": p["acne_1"],
                "given_label": "acne",
                "decision": "DROP ",
                "new_label": "",
                "who": "dr a",
                "why": "not skin",
            },
            {
                "path": p["blister_2"],
                "given_label": "blister",
                "decision": "keep",
                "new_label": "acne",
                "who": "",
                "why": "",
            },
            {"path": p["tumor_3"], "given_label": "tumor", "decision": "", "new_label": "acne", "who": "", "why": ""},
        ],
    )
    derived = apply_decisions(manifest, table)
    before = manifest.records.set_index("path")
    after = derived.records.set_index("path")
    assert set(before.index) - set(after.index) == {p["acne_1"]}
    changed = [q for q in after.index if after.loc[q, "label"] != before.loc[q, "label"]]
    assert changed == [p["acne_0"]] and after.loc[p["acne_0"], "label"] == "tumor"
    unchanged = after.drop(index=p["acne_0"])
    pd.testing.assert_frame_equal(unchanged, before.loc[unchanged.index])  # bytes, digests, splits as they were
    assert derived.parent_version == manifest.version != derived.version
    aside = derived.quarantined.set_index("path").loc[p["acne_1"]]
    assert aside["reason"] == DROP_REASON and aside["note"] == "dr a: not skin"
    path, wrote = write_decided_version(derived, table, tmp_path / "versions" / "v1")
    assert wrote and Manifest.load(path).version == derived.version
    assert pd.read_csv(path.with_name("decisions.csv"))["why"].tolist()[:2] == ["nodule", "not skin"]
    assert write_decided_version(derived, table, tmp_path / "versions" / "v1") == (path, False)  # reused


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"path": "elsewhere.png", "given_label": "acne", "decision": "drop", "new_label": ""}, "is not an image of"),
        ({"path": "acne/acne_0.png", "given_label": "tumor", "decision": "drop", "new_label": ""}, "another version"),
        ({"path": "acne/acne_0.png", "given_label": "acne", "decision": "relabel", "new_label": "wart"}, "not a class"),
    ],
)
def test_decisions_that_do_not_fit_the_data_name_the_file(folder, tmp_path, row, message):
    manifest = build_manifest(folder)
    if row["path"] != "elsewhere.png":
        row = {**row, "path": str(folder / row["path"])}
    with pytest.raises(DecisionError, match=message):
        apply_decisions(manifest, _decisions(tmp_path, [row]))


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"path": "a.png", "given_label": "acne", "decision": "move", "new_label": ""}], "line 2: decision 'move'"),
        ([{"path": "a.png", "given_label": "acne", "decision": "relabel", "new_label": ""}], "without a new_label"),
        ([{"path": "a.png", "given_label": "acne", "decision": "keep", "new_label": ""}] * 2, "more than once"),
        ([{"path": "a.png", "label": "acne"}], "missing column"),
    ],
)
def test_a_broken_decisions_file_is_one_line(tmp_path, rows, message):
    with pytest.raises(DecisionError, match=message):
        _decisions(tmp_path, rows)


def test_the_review_page_embeds_its_images_and_escapes_names():
    issues = pd.DataFrame(
        [["<b>x</b>.jpg", "acne", "tumor", 0.05, "likely_mislabelled", "p(acne) 0.05"]], columns=li.ISSUE_COLUMNS
    )
    thumb = thumbnail_uri(np.zeros((8, 8, 3), np.uint8))
    noise = pd.DataFrame([["acne", "tumor", 0.02, 3]], columns=["given_label", "true_label", "share", "images"])
    page = review_page(issues, {"<b>x</b>.jpg": thumb}, noise, "review", "method")
    assert "&lt;b&gt;x&lt;/b&gt;.jpg" in page and "<b>x</b>" not in page
    assert page.count("data:image/png;base64,") == 1 and "http" not in page
    template = decisions_template(issues)
    assert template.loc[0, "new_label"] == "tumor" and template.loc[0, "decision"] == ""


def test_weak_probes_are_said_to_be_weak():
    assert li.probe_warning(0.94, 0.8) is None
    warning = li.probe_warning(0.51, 0.8)
    assert "51% of the images" in warning and "not wrong labels" in warning
