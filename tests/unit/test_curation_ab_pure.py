"""Pure helpers behind the curation A/B flow (ml/curation.py): curated CSV manifest with the
original split of every image, split checks, deltas, version key and the written curated version."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml.data.manifest import build_manifest
from ml.data.synth import SynthConfig, generate
from ml.quality.curation import (
    CURATED_MANIFEST,
    ab_comparison,
    curated_manifest,
    curation_key,
    split_mismatches,
    with_sources,
    write_curated_version,
)
from ml.quality.features import image_features
from ml.quality.validation import load_policy


def _log(root: Path) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "path": "/src/b/b_1.jpg",
                "label": "b",
                "split": "val",
                "out_path": str(root / "b" / "b_1.png"),
                "status": "curated",
            },
            {
                "path": "/src/a/a_0.jpg",
                "label": "a",
                "split": "train",
                "out_path": str(root / "a" / "a_0.jpg"),
                "status": "copied",
            },
            {"path": "/src/a/a_9.jpg", "label": "a", "split": "test", "out_path": None, "status": "unreadable"},
            {
                "path": "/src/b/b_2.jpg",
                "label": "b",
                "split": "test",
                "out_path": str(root / "b" / "b_2.jpg"),
                "status": "copied",
            },
        ]
    )


def test_curated_manifest_keeps_each_originals_split_with_relative_paths(tmp_path: Path) -> None:
    table = curated_manifest(_log(tmp_path), tmp_path)
    assert table.to_dict("records") == [
        {"path": "a/a_0.jpg", "label": "a", "split": "train", "source_path": "/src/a/a_0.jpg"},
        {"path": "b/b_1.png", "label": "b", "split": "val", "source_path": "/src/b/b_1.jpg"},
        {"path": "b/b_2.jpg", "label": "b", "split": "test", "source_path": "/src/b/b_2.jpg"},
    ]  # the unreadable file has no output and is left out; rows sorted by path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda log, root: log.assign(split=["val", "", None, "test"]), "without a split"),
        (lambda log, root: log.assign(out_path=[str(root.parent / "x.png"), *log["out_path"][1:]]), "outside"),
        (lambda log, root: log.assign(out_path=[log["out_path"][0]] * 2 + list(log["out_path"][2:])), "twice"),
    ],
)
def test_curated_manifest_refuses_inconsistent_logs(tmp_path: Path, edit, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        curated_manifest(edit(_log(tmp_path), tmp_path), tmp_path)


def test_split_mismatches_names_every_kind_of_problem() -> None:
    original = pd.DataFrame(
        {"path": ["p1", "p2", "p3", "p4"], "label": ["a", "a", "b", "b"], "split": ["train", "val", "test", "train"]}
    )
    same = pd.DataFrame(
        {
            "source_path": ["p1", "p2", "p3", "p4"],
            "label": ["a", "a", "b", "b"],
            "split": ["train", "val", "test", "train"],
        }
    )
    assert split_mismatches(original, same).empty
    bad = pd.DataFrame(
        {
            "source_path": ["p1", "p2", "p3", None],
            "label": ["a", "b", "b", "b"],
            "split": ["val", "val", "test", "train"],
        }
    )
    found = dict(zip(split_mismatches(original, bad)["path"].fillna("?"), split_mismatches(original, bad)["problem"]))
    assert found == {"p1": "split_changed", "p2": "label_changed", "p4": "missing", "?": "unknown_source"}


def test_ab_comparison_deltas_are_curated_minus_baseline() -> None:
    rows = ab_comparison(
        {"accuracy": 0.5, "balanced_accuracy": 0.4, "macro_f1": 0.30},
        {"accuracy": 0.625, "balanced_accuracy": 0.35, "macro_f1": None},
    )
    assert [r["metric"] for r in rows] == ["accuracy", "balanced_accuracy", "macro_f1"]
    assert rows[0]["delta"] == pytest.approx(0.125) and rows[1]["delta"] == pytest.approx(-0.05)
    assert rows[2] == {"metric": "macro_f1", "baseline": 0.30, "curated": None, "delta": None}


def test_curation_key_tracks_files_splits_steps_and_policy() -> None:
    rec = pd.DataFrame({"path": ["a", "b"], "sha256": ["1", "2"], "label": ["x", "y"], "split": ["train", "val"]})
    policy = load_policy()
    key = curation_key(rec, ["remove_confounders"], policy)
    assert key == curation_key(rec.iloc[::-1], ["remove_confounders"], policy)  # row order is irrelevant
    assert (
        len(
            {
                key,
                curation_key(rec.assign(split=["val", "train"]), ["remove_confounders"], policy),
                curation_key(rec.assign(sha256=["1", "3"]), ["remove_confounders"], policy),
                curation_key(rec, ["remove_confounders", "gamma"], policy),
                curation_key(rec, ["remove_confounders"], {**policy, "curation": {**policy["curation"], "k": 4}}),
            }
        )
        == 5
    )


def _digests(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_write_curated_version_preserves_splits_and_reuses_a_complete_folder(tmp_path: Path) -> None:
    src = tmp_path / "src"
    generate(src, SynthConfig(per_class=3, size=32, seed=0, pen_rate={"acne": 1.0}), progress=False)
    before = _digests(src)
    m = build_manifest(src)
    splits = np.array(["train", "val", "test"])[np.arange(len(m.records)) % 3]
    records = m.records.assign(split=splits)
    dest = tmp_path / "datasets" / "src-curated" / curation_key(records, ["remove_confounders"], load_policy())

    version = write_curated_version(records, dest, ["remove_confounders"], load_policy())
    assert not version.reused and version.manifest_csv == dest.resolve() / CURATED_MANIFEST
    assert _digests(src) == before, "the originals are only read"
    assert [p.name for p in dest.parent.iterdir()] == [dest.name], "no temporary folder is left behind"
    assert version.counts()["curated"] >= 3 and sum(version.counts().values()) == len(records)
    assert all(str(p).startswith(str(dest.resolve())) and Path(p).is_file() for p in version.log["out_path"])

    curated = build_manifest(version.manifest_csv)
    assert len(curated.records) == len(records) and curated.bad.empty
    assert split_mismatches(records, with_sources(curated.records, version.manifest_csv)).empty
    assert curated.version != m.version
    # curated acne images (all pen-marked) score lower on confounders than their originals
    acne = version.log[version.log["label"] == "acne"]
    for orig, out in zip(acne["path"], acne["out_path"], strict=True):
        assert image_features(out)["confounder_score"] < image_features(orig)["confounder_score"]

    stamp = version.manifest_csv.stat().st_mtime_ns
    again = write_curated_version(records, dest, ["remove_confounders"], load_policy())
    assert again.reused and again.manifest_csv.stat().st_mtime_ns == stamp
    assert again.log["out_path"].tolist() == version.log["out_path"].tolist()


def test_write_curated_version_refuses_a_foreign_folder(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "other.txt").write_text("not ours")
    rec = pd.DataFrame(columns=["path", "label", "split"])
    with pytest.raises(FileExistsError, match="not a curated version"):
        write_curated_version(rec, dest, ["remove_confounders"], {})
    assert (dest / "other.txt").read_text() == "not ours"
