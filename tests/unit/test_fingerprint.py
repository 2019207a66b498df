"""The manifest cache's key (ml/data/fingerprint.py and the build-manifest task's cache policy):
every change to what a manifest would read changes the key, and nothing else does."""

from __future__ import annotations

import os
from pathlib import Path

from ml.data.fingerprint import MANIFEST_CODE, code_version, source_fingerprint


def _tree(root: Path) -> Path:
    for label in ("acne", "ulcer"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            (root / label / f"{i}.jpg").write_bytes(bytes([i]) * 100)
    return root


def _touch_later(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_a_folder_key_is_stable_and_changes_with_every_file(tmp_path):
    root = _tree(tmp_path / "ds")
    key = source_fingerprint(str(root))
    assert key == source_fingerprint(str(root))
    changes = [
        lambda: (root / "acne" / "broken.jpg").write_bytes(b"\xff"),  # a bad file added
        lambda: (root / "acne" / "empty.jpg").write_bytes(b""),
        lambda: (root / "acne" / ".hidden.jpg").write_bytes(b"x"),  # hidden files are reported too
        lambda: (root / "ulcer" / "0.jpg").unlink(),
        lambda: (root / "ulcer" / "1.jpg").write_bytes(b"y" * 100),  # same size, new bytes and mtime
        lambda: _touch_later(root / "ulcer" / "2.jpg"),
        lambda: (root / "acne" / "0.jpg").rename(root / "ulcer" / "moved.jpg"),  # relabelled
    ]
    seen = {key}
    for change in changes:
        change()
        new = source_fingerprint(str(root))
        assert new not in seen
        seen.add(new)


def test_a_csv_key_covers_the_files_it_lists(tmp_path):
    root = _tree(tmp_path / "ds")
    csv = root / "list.csv"
    csv.write_text("path,label\nacne/0.jpg,acne\nacne/1.jpg,acne\nulcer/0.jpg,ulcer\n" + "acne/0.jpg,acne\n" * 3)
    key = source_fingerprint(str(csv))
    (root / "acne" / "2.jpg").write_bytes(b"unlisted")  # not listed: not read, key unchanged
    assert source_fingerprint(str(csv)) == key
    (root / "acne" / "1.jpg").write_bytes(b"\xff\xd8 corrupted")  # a listed file corrupted
    corrupted = source_fingerprint(str(csv))
    assert corrupted != key
    (root / "ulcer" / "0.jpg").unlink()  # a listed file deleted
    assert source_fingerprint(str(csv)) not in {key, corrupted}


def test_options_code_and_class_map_bytes_are_part_of_the_key(tmp_path, monkeypatch):
    root = _tree(tmp_path / "ds")
    cmap = tmp_path / "map.yaml"
    cmap.write_text("acne: [acne]\n")
    key = source_fingerprint(str(root), {"class_map": str(cmap), "check": True})
    assert source_fingerprint(str(root), {"class_map": str(cmap), "check": False}) != key
    cmap.write_text("acne: [acne, ulcer]\n")
    assert source_fingerprint(str(root), {"class_map": str(cmap), "check": True}) != key
    import ml.data.fingerprint as fp

    monkeypatch.setattr(fp, "code_version", lambda modules: "other code")
    assert fp.source_fingerprint(str(root), {"class_map": str(cmap), "check": True}) != key
    assert len(code_version(MANIFEST_CODE)) == 64


def test_no_key_for_s3_or_a_missing_source_and_link_loops_end(tmp_path):
    assert source_fingerprint("s3://bucket/prefix") is None
    assert source_fingerprint(str(tmp_path / "absent")) is None
    root = _tree(tmp_path / "ds")
    (root / "acne" / "loop").symlink_to(root, target_is_directory=True)
    assert source_fingerprint(str(root)) is not None  # each real folder once: no endless walk


def test_the_build_manifest_task_caches_by_this_key_only_for_local_sources(tmp_path):
    from tasks.data import SourceFingerprint, build_manifest

    root = _tree(tmp_path / "ds")
    policy = build_manifest.cache_policy
    assert isinstance(policy, SourceFingerprint)
    inputs = {"source": str(root), "class_map": None, "check": True, "allow_outside_root": False}
    key = policy.compute_key(None, inputs, {})
    assert key and key == policy.compute_key(None, dict(inputs), {})
    assert policy.compute_key(None, {**inputs, "allow_outside_root": True}, {}) != key
    (root / "acne" / "broken.jpg").write_bytes(b"\xff")
    assert policy.compute_key(None, inputs, {}) != key
    assert policy.compute_key(None, {**inputs, "source": "s3://b/p"}, {}) is None


def test_a_csv_of_many_rows_to_one_file_stats_it_once(tmp_path, monkeypatch):
    import ml.data.fingerprint as fp

    root = _tree(tmp_path / "ds")
    csv = root / "many.csv"
    csv.write_text("path,label\n" + "acne/0.jpg,acne\n" * 100_000 + "ulcer/1.jpg,ulcer\n")
    calls = []
    real = fp._stat_line
    monkeypatch.setattr(fp, "_stat_line", lambda path, shown: calls.append(shown) or real(path, shown))
    assert fp.source_fingerprint(str(csv))
    assert calls == ["acne/0.jpg", "ulcer/1.jpg"]
