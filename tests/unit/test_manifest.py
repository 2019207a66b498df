"""ml.data.manifest: ImageFolder and CSV sources, versions, class maps, bad inputs, save/load."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ml.data.manifest import Manifest, build_manifest, load_class_map

CLASSES = ("acne", "tumor", "wheal")


def write_image(path: Path, seed: int, size: int = 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, quality=90)
    return path


def make_folder(root: Path, classes=CLASSES, per_class: int = 3) -> Path:
    for ci, label in enumerate(classes):
        for i in range(per_class):
            write_image(root / label / f"{label}_{i}.jpg", seed=100 * ci + i)
    return root


def write_csv(folder: Path, name: str = "manifest.csv", **columns) -> Path:
    path = folder / name
    pd.DataFrame(columns).to_csv(path, index=False)
    return path


def folder_as_csv(root: Path) -> Path:
    files = sorted(p for p in root.rglob("*.jpg"))
    return write_csv(root, path=[p.relative_to(root).as_posix() for p in files], label=[p.parent.name for p in files])


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "ds")


def test_image_folder_records(folder: Path) -> None:
    m = build_manifest(folder)
    assert m.classes == list(CLASSES)
    assert len(m.records) == 9 and m.bad.empty
    assert list(m.records.columns) == ["path", "local_path", "label", "source_label", "split", "sha256", "bytes"]
    first = m.records.iloc[0]
    assert Path(first.path).is_file() and first.local_path == first.path
    assert first.bytes == Path(first.path).stat().st_size
    assert set(m.records["split"]) == {""}
    assert m.summary()["counts"] == {c: {"unassigned": 3} for c in CLASSES}


def test_folder_and_csv_give_the_same_records_and_version(folder: Path) -> None:
    from_folder = build_manifest(folder)
    from_csv = build_manifest(folder_as_csv(folder))
    cols = ["path", "label", "split", "sha256", "bytes"]
    pd.testing.assert_frame_equal(from_folder.records[cols], from_csv.records[cols])
    assert from_folder.version == from_csv.version
    assert len(from_folder.version) == 16 and int(from_folder.version, 16) >= 0


def test_csv_paths_may_be_absolute(folder: Path, tmp_path: Path) -> None:
    files = sorted(folder.rglob("*.jpg"))
    csv = write_csv(tmp_path, "abs.csv", path=[str(p) for p in files], label=[p.parent.name for p in files])
    m = build_manifest(csv)
    assert sorted(m.records["path"]) == sorted(str(p) for p in files)
    assert m.classes == list(CLASSES)


def test_version_is_stable_and_tracks_bytes_and_labels(folder: Path) -> None:
    v1 = build_manifest(folder).version
    assert build_manifest(folder).version == v1

    csv = folder_as_csv(folder)
    assert build_manifest(csv).version == v1
    table = pd.read_csv(csv)
    table.loc[0, "label"] = "wheal" if table.loc[0, "label"] != "wheal" else "acne"
    table.to_csv(csv, index=False)
    assert build_manifest(csv).version != v1
    csv.unlink()

    target = next(iter(sorted(folder.rglob("*.jpg"))))
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit in the entropy-coded data
    target.write_bytes(bytes(data))
    assert build_manifest(folder, check=False).version != v1


def test_split_layout_is_detected(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    make_folder(root / "train", per_class=3)
    make_folder(root / "test", per_class=1)
    (root / "NOTICE.md").write_text("licence notes")
    m = build_manifest(root)
    assert m.classes == list(CLASSES)
    assert m.records.groupby("split").size().to_dict() == {"test": 3, "train": 9}
    assert m.bad.empty
    assert m.summary()["counts"]["acne"] == {"test": 1, "train": 3}


def test_bad_files_are_reported_not_dropped(folder: Path) -> None:
    (folder / "acne" / "empty.jpg").write_bytes(b"")
    (folder / "tumor" / "notes.jpg").write_text("not an image")
    good = (folder / "wheal" / "wheal_0.jpg").read_bytes()
    (folder / "wheal" / "cut.jpg").write_bytes(good[: len(good) // 2])
    write_image(folder / "stray.jpg", seed=7)
    m = build_manifest(folder)
    assert len(m.records) == 9
    reasons = dict(zip(m.bad["path"].map(lambda p: Path(p).name), m.bad["reason"], strict=True))
    assert reasons == {
        "empty.jpg": "zero_bytes",
        "notes.jpg": "not_an_image",
        "cut.jpg": "truncated",
        "stray.jpg": "no_label",
    }
    assert (m.bad["message"].str.len() > 0).all()
    assert m.summary()["bad"] == {"zero_bytes": 1, "not_an_image": 1, "truncated": 1, "no_label": 1}


def test_csv_row_problems_become_bad_rows(folder: Path) -> None:
    csv = write_csv(
        folder,
        path=["acne/acne_0.jpg", "acne/acne_0.jpg", "acne/gone.jpg", "tumor/tumor_0.jpg"],
        label=["acne", "acne", "acne", ""],
        split=["train", "train", "valid", "test"],
    )
    m = build_manifest(csv)
    assert m.records["path"].map(lambda p: Path(p).name).tolist() == ["acne_0.jpg"]
    assert sorted(m.bad["reason"]) == ["duplicate_entry", "missing_file", "no_label"]
    assert "line 3" in m.bad.set_index("reason").loc["duplicate_entry", "message"]


def test_csv_schema_errors_are_clear(folder: Path) -> None:
    with pytest.raises(ValueError, match=r"missing column\(s\) \['label'\]"):
        build_manifest(write_csv(folder, "a.csv", path=["acne/acne_0.jpg"], klass=["acne"]))
    with pytest.raises(ValueError, match="unknown split 'holdout'"):
        build_manifest(write_csv(folder, "b.csv", path=["acne/acne_0.jpg"], label=["acne"], split=["holdout"]))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_manifest(folder / "nope.csv")


def test_class_map_maps_and_reports_unmapped(tmp_path: Path) -> None:
    root = tmp_path / "sd"
    for i, source in enumerate(["Acne_Vulgaris", "steroid acne", "Urticaria", "Bowens-Disease", "Mystery Rash"]):
        write_image(root / source / f"{i}.jpg", seed=i)
    m = build_manifest(root, class_map="sd198_to_10")
    mapped = dict(zip(m.records["source_label"], m.records["label"], strict=True))
    assert mapped == {"Acne_Vulgaris": "acne", "steroid acne": "acne", "Urticaria": "wheal", "Bowens-Disease": "crust"}
    assert m.classes == ["acne", "crust", "wheal"]
    assert m.bad[["label", "reason"]].values.tolist() == [["Mystery Rash", "unmapped_label"]]
    assert "Mystery Rash" in m.bad["message"].iloc[0]


def test_shipped_class_map_has_the_ten_labels() -> None:
    cmap = load_class_map("sd198_to_10")
    assert cmap.labels == [
        "acne",
        "alopecia",
        "blister",
        "crust",
        "erythema",
        "leukoderma",
        "macula",
        "tumor",
        "ulcer",
        "wheal",
    ]
    assert sum(len(v) for v in cmap.groups.values()) == 59 + 11  # Table 5.9's entries + SD-198 folder names
    assert cmap.lookup("ERYTHEMA_AB_IGNE") == "erythema"
    assert cmap.lookup("dermatofibroma") == "tumor"
    assert cmap.lookup("macula") == "macula"
    assert cmap.lookup("psoriasis") is None


def test_class_map_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mapped to both 'a' and 'b'"):
        load_class_map({"a": ["Foo Bar"], "b": ["foo_bar"]})
    with pytest.raises(FileNotFoundError, match="sd198_to_10"):
        load_class_map("no_such_map")
    bad_yaml = tmp_path / "m.yaml"
    bad_yaml.write_text("acne: Acne Vulgaris\n")
    with pytest.raises(ValueError, match="must be a list"):
        load_class_map(bad_yaml)


def test_save_and_load_round_trip(folder: Path, tmp_path: Path) -> None:
    (folder / "acne" / "empty.jpg").write_bytes(b"")
    m = build_manifest(folder)
    path = m.save(tmp_path / "out" / "manifest.csv")
    assert path.with_suffix(".json").is_file()
    loaded = Manifest.load(path)
    pd.testing.assert_frame_equal(loaded.records, m.records)
    pd.testing.assert_frame_equal(loaded.bad, m.bad)
    assert (loaded.classes, loaded.source, loaded.version) == (m.classes, m.source, m.version)

    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    table.loc[0, "label"] = "tumor"
    table.to_csv(path, index=False)
    with pytest.raises(ValueError, match="sidecar says"):
        Manifest.load(path)


def test_moved_dataset_keeps_its_version(folder: Path, tmp_path: Path) -> None:
    moved = shutil.copytree(folder, tmp_path / "elsewhere" / "copy")
    assert build_manifest(moved).version == build_manifest(folder).version


def _reasons(m: Manifest) -> dict[str, str]:
    return dict(zip(m.bad["path"].map(lambda p: Path(p).name), m.bad["reason"], strict=True))


def test_broken_symlink_and_empty_class_folder_are_reported(folder: Path, caplog) -> None:
    (folder / "acne" / "gone.jpg").symlink_to(folder / "acne" / "deleted.jpg")
    (folder / "ulcer").mkdir()
    (folder / "blister").mkdir()
    (folder / "blister" / "empty.jpg").write_bytes(b"")
    with caplog.at_level("WARNING", logger="ml.data.manifest"):
        m = build_manifest(folder)
    assert _reasons(m) == {"gone.jpg": "broken_symlink", "empty.jpg": "zero_bytes"}
    assert "deleted.jpg" in m.bad.set_index("reason").loc["broken_symlink", "message"]
    assert m.classes == list(CLASSES)
    assert m.empty_classes == ["blister", "ulcer"] == m.summary()["empty_classes"]
    assert m.warnings() == [
        "class 'blister' has no usable image (1 file(s) left out)",
        "class 'ulcer' has no usable image (no file)",
    ]
    assert "class 'ulcer' has no usable image" in caplog.text and "gone.jpg: broken_symlink" in caplog.text


def test_links_inside_the_root_are_followed_and_loops_reported(folder: Path) -> None:
    (folder / "acne" / "alias.jpg").symlink_to(folder / "tumor" / "tumor_0.jpg")
    (folder / "wheal" / "more").symlink_to(folder / "tumor")
    (folder / "tumor" / "loop").symlink_to(folder)
    m = build_manifest(folder)
    rel = {
        Path(p).relative_to(folder).as_posix(): lab
        for p, lab in zip(m.records["path"], m.records["label"], strict=True)
    }
    assert rel["acne/alias.jpg"] == "acne" and rel["wheal/more/tumor_2.jpg"] == "wheal"
    assert len(m.records) == 9 + 1 + 3
    assert m.bad[["path", "label", "reason"]].values.tolist() == [  # the loop is met twice: once through wheal/more
        [str(folder / "tumor" / "loop"), "tumor", "symlink_loop"],
        [str(folder / "wheal" / "more" / "loop"), "wheal", "symlink_loop"],
    ]


def test_links_outside_the_root_are_refused_unless_allowed(folder: Path, tmp_path: Path) -> None:
    elsewhere = make_folder(tmp_path / "elsewhere", classes=("ulcer",), per_class=2)
    (folder / "acne" / "out.jpg").symlink_to(elsewhere / "ulcer" / "ulcer_0.jpg")
    (folder / "ulcer").symlink_to(elsewhere / "ulcer")
    m = build_manifest(folder)
    assert _reasons(m) == {"out.jpg": "outside_root", "ulcer": "outside_root"}
    assert m.bad.set_index("reason")["label"].tolist() == ["acne", "ulcer"]
    assert "allow_outside_root=True" in m.bad["message"].iloc[0]
    assert len(m.records) == 9 and m.empty_classes == ["ulcer"]

    allowed = build_manifest(folder, allow_outside_root=True)
    assert allowed.bad.empty and allowed.classes == sorted([*CLASSES, "ulcer"])
    assert len(allowed.records) == 9 + 1 + 2


def test_csv_paths_outside_the_root_are_refused_and_never_opened(folder: Path, tmp_path: Path, monkeypatch) -> None:
    import ml.data.sources as sources_module

    a, b = write_image(tmp_path / "outside" / "a.jpg", seed=5), write_image(tmp_path / "outside" / "b.jpg", seed=6)
    opened: list[str] = []
    real_inspect = sources_module.inspect_image
    monkeypatch.setattr(sources_module, "inspect_image", lambda p, **kw: opened.append(str(p)) or real_inspect(p, **kw))
    csv = write_csv(folder, path=["acne/acne_0.jpg", str(a), "../outside/b.jpg", "/etc/passwd"], label=["acne"] * 4)
    m = build_manifest(csv)
    assert m.records["path"].tolist() == [str(folder / "acne" / "acne_0.jpg")]
    assert m.bad[["path", "reason"]].values.tolist() == [
        ["/etc/passwd", "outside_root"],
        [str(a), "outside_root"],
        [str(b), "outside_root"],
    ]
    assert opened == [str(folder / "acne" / "acne_0.jpg")]
    assert str(folder) in m.bad["message"].iloc[0]

    allowed = build_manifest(
        write_csv(folder, "ok.csv", path=[str(a), "../outside/b.jpg"], label=["acne", "acne"]), allow_outside_root=True
    )
    assert allowed.records["path"].tolist() == [str(a), str(b)] and allowed.bad.empty


def test_outside_root_for_s3_keys() -> None:
    from ml.data.sources import outside_root

    root = "s3://bucket/ds"
    assert not outside_root("s3://bucket/ds/acne/1.jpg", root)
    for path in ("s3://bucket/ds/../secret.jpg", "s3://bucket/dsx/1.jpg", "s3://other/ds/1.jpg", "/etc/passwd"):
        assert outside_root(path, root), path
    assert outside_root("s3://bucket/ds/1.jpg", "/data/ds")


def test_bad_report_names_the_first_files_and_counts_the_rest(folder: Path) -> None:
    for i in range(5):
        (folder / "acne" / f"empty_{i}.jpg").write_bytes(b"")
    (folder / "tumor" / "notes.jpg").write_text("not an image")
    m = build_manifest(folder)
    report = m.bad_report(limit=3)
    assert report.splitlines() == [
        "6 file(s) left out:",
        "  acne/empty_0.jpg: zero_bytes",
        "  acne/empty_1.jpg: zero_bytes",
        "  acne/empty_2.jpg: zero_bytes",
        "  ... and 3 more",
        "  by reason: zero_bytes 5, not_an_image 1",
    ]
    assert "tumor/notes.jpg: not_an_image" in m.bad_report()
    assert build_manifest(make_folder(folder.parent / "clean")).bad_report() == "no file left out"


def test_all_files_holds_records_and_bad_rows(folder: Path) -> None:
    (folder / "acne" / "empty.jpg").write_bytes(b"")
    m = build_manifest(folder)
    every = m.all_files()
    assert len(every) == 10 and set(every["path"]) == {*m.records["path"], *m.bad["path"]}
    assert every.set_index("path").loc[str(folder / "acne" / "empty.jpg"), "reason"] == "zero_bytes"
    assert (every.set_index("path").loc[list(m.records["path"]), "reason"] == "").all()


def test_classes_the_class_map_promises_but_lacks_are_missing(tmp_path: Path, caplog) -> None:
    root = tmp_path / "sd"
    for i in range(3):
        write_image(root / "Acne_Vulgaris" / f"{i}.jpg", seed=i)
    (root / "Urticaria").mkdir()
    with caplog.at_level("WARNING", logger="ml.data.manifest"):
        m = build_manifest(root, class_map="sd198_to_10")
    promised = load_class_map("sd198_to_10").labels
    assert m.classes == ["acne"] and m.expected_classes == promised
    assert m.missing_classes == [c for c in promised if c != "acne"] == m.summary()["missing_classes"]
    assert m.empty_classes == ["Urticaria"]
    assert "9 class(es) of the class map have no usable image: alopecia" in caplog.text
    path = m.save(tmp_path / "m.csv")
    loaded = Manifest.load(path)
    assert (loaded.empty_classes, loaded.class_map_labels, loaded.missing_classes) == (
        m.empty_classes,
        promised,
        m.missing_classes,
    )
    plain = build_manifest(root)
    assert plain.class_map_labels is None and plain.expected_classes == plain.classes and plain.missing_classes == []


def test_a_saved_manifest_is_read_within_the_root_of_its_source(folder: Path, tmp_path: Path) -> None:
    saved = build_manifest(folder).save(tmp_path / "out" / "manifest.csv")
    again = build_manifest(saved)
    assert again.bad.empty and sorted(again.records["path"]) == sorted(build_manifest(folder).records["path"])
    (tmp_path / "out" / "other.csv").write_text(saved.read_text())  # no sidecar: the CSV's own folder is the root
    assert set(build_manifest(tmp_path / "out" / "other.csv").bad["reason"]) == {"outside_root"}


@pytest.mark.parametrize(
    "argv",
    [
        ["data", "manifest", "{csv}"],
        ["data", "split", "{csv}", "--out", "{tmp}/split.csv"],
        ["validate", "{csv}"],
        ["train", "--data", "{csv}"],
        ["retrain", "--data", "{csv}"],
        ["tune", "--data", "{csv}"],
    ],
)
def test_a_header_only_csv_is_one_line_and_exit_2_in_every_verb(tmp_path, capsys, argv) -> None:
    from flows.cli import main

    csv = tmp_path / "empty.csv"
    csv.write_text("path,label\n")
    with pytest.raises(SystemExit) as done:
        main([a.format(csv=csv, tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert done.value.code == 2, err
    assert "the CSV lists no files" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "split.csv").exists()


def test_a_split_layout_mixed_with_flat_class_folders_is_refused_naming_both(tmp_path) -> None:
    from ml.data.manifest import check_source

    for rel in ("train/acne/a.jpg", "test/ulcer/b.jpg", "blister/c.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 64), (200, 120, 100)).save(tmp_path / rel)
    for call in (build_manifest, check_source):
        with pytest.raises(
            ValueError, match=r"mixed layout: split folders \(test, train\) beside class folders \(blister\)"
        ):
            call(tmp_path)


def test_class_maps_match_non_ascii_labels_by_their_letters() -> None:
    from ml.data.manifest import ClassMap, normalise_label

    cmap = ClassMap.from_mapping({"eczema": ["湿疹", "Ekzém"], "acne": ["ACNE"]})
    assert cmap.lookup("湿疹") == "eczema" and cmap.lookup("皮膚炎") is None, "two Japanese names are not one"
    assert cmap.lookup("ekzém") == "eczema" and cmap.lookup("Ekzem") is None, "the accent is a letter"
    assert cmap.lookup("ＡＣＮＥ") == "acne", "full-width letters are NFKC's ASCII"
    assert normalise_label("Bowen's_Disease") == "bowensdisease" and normalise_label("Straße") == "strasse"
    ClassMap.from_mapping({"a": ["湿疹"], "b": ["皮膚炎"]})  # two labels, two keys: no "mapped to both"


def test_case_only_duplicate_classes_are_warned_with_the_class_map_that_merges_them(tmp_path, caplog) -> None:
    for label in ("Acne", "acne", "ulcer"):
        (tmp_path / label).mkdir()
        for i in range(2):
            Image.new("RGB", (64, 64), (100 + 40 * i, 80, len(label) * 9)).save(tmp_path / label / f"{label}{i}.jpg")
    with caplog.at_level("WARNING", logger="ml.data"):
        m = build_manifest(tmp_path)
    assert m.classes == ["Acne", "acne", "ulcer"] and m.near_identical_classes() == [["Acne", "acne"]]
    assert "classes 'Acne', 'acne' differ only in case or punctuation" in caplog.text
    merged = build_manifest(tmp_path, class_map={"acne": ["Acne", "acne"], "ulcer": ["ulcer"]})
    assert merged.classes == ["acne", "ulcer"] and (merged.records["label"] == "acne").sum() == 4


def test_an_image_without_an_extension_above_the_class_folders_is_reported(tmp_path) -> None:
    (tmp_path / "acne").mkdir()
    Image.new("RGB", (64, 64), (200, 120, 100)).save(tmp_path / "acne" / "a.jpg")
    Image.new("RGB", (64, 64), (20, 120, 100)).save(tmp_path / "IMG_0001", format="JPEG")
    (tmp_path / "LICENSE").write_text("not an image, not a word about it\n")
    m = build_manifest(tmp_path)
    bad = dict(zip(m.bad["path"].map(lambda p: Path(p).name), m.bad["message"], strict=True))
    assert list(bad) == ["IMG_0001"] and "a JPEG image without an extension" in bad["IMG_0001"]
    assert m.bad["reason"].tolist() == ["no_label"]
