"""ml.data.sources: one judgement of a file wherever it enters (the manifest, the monitor's batch
loader; folder, CSV, S3), the root rule as a pure function, the atomic download cache, and one
decode per batch image."""

from __future__ import annotations

import errno
import hashlib
import io
import os
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from ml.data.images import load_rgb
from ml.data.manifest import build_manifest
from ml.data.sources import DownloadCache, Source, outside_root, resolve
from ml.monitor.batch import load_batch
from ml.storage import ObjectNotFoundError, StorageError


def _jpeg(seed: int, size: int = 24) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _gif(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, "GIF")
    return buf.getvalue()


# --- the same odd file, the same reason, wherever it enters ------------------------------------------


def _make_odd(kind: str, acne: Path, outside: Path) -> str:
    """Put one odd entry of ``kind`` in ``acne/``; returns its name."""
    if kind == "outside_link":
        (acne / "secret.jpg").symlink_to(outside / "secret.jpg")
        return "secret.jpg"
    if kind == "zero_bytes":
        (acne / "zero.jpg").write_bytes(b"")
        return "zero.jpg"
    if kind == "truncated":
        data = _jpeg(3, size=64)
        (acne / "cut.jpg").write_bytes(data[: len(data) // 2])
        return "cut.jpg"
    if kind == "not_an_image":
        (acne / "notes.jpg").write_text("not an image")
        return "notes.jpg"
    if kind == "unsupported_format":
        (acne / "anim.gif").write_bytes(_gif(4))
        return "anim.gif"
    if kind == "broken_link":
        (acne / "gone.jpg").symlink_to("deleted.jpg")
        return "gone.jpg"
    if kind == "fifo":
        os.mkfifo(acne / "pipe.jpg")
        return "pipe.jpg"
    if kind == "loop_folder":
        (acne / "loop").symlink_to(".")
        return "loop"
    if kind == "outside_folder":
        (acne / "elsewhere").symlink_to(outside)
        return "elsewhere"
    raise AssertionError(kind)


ODD = {  # kind -> the reason every route gives
    "outside_link": "outside_root",
    "zero_bytes": "zero_bytes",
    "truncated": "truncated",
    "not_an_image": "not_an_image",
    "unsupported_format": "unsupported_format",
    "broken_link": "broken_symlink",
    "fifo": "not_a_file",
    "loop_folder": "symlink_loop",
    "outside_folder": "outside_root",
}
FOLDER_KINDS = {"loop_folder", "outside_folder"}  # folders: met by walking, not listed in a CSV
ROUTES = ("manifest-folder", "manifest-csv", "batch-imagefolder", "batch-unlabelled", "batch-csv")


def _enter(route: str, ds: Path, names: list[str]):
    """``(records, bad)`` of ``ds`` entered by ``route`` (``names``: the files of ``ds/acne``)."""
    if route == "manifest-folder":
        m = build_manifest(ds)
        return m.records, m.bad
    if route == "manifest-csv":
        lines = "".join(f"acne/{n},acne\n" for n in names)
        (ds / "list.csv").write_text("path,label\n" + lines)
        m = build_manifest(ds / "list.csv")
        return m.records, m.bad
    if route == "batch-imagefolder":
        b = load_batch(ds)
    elif route == "batch-unlabelled":
        b = load_batch(ds / "acne")  # a flat folder: the batch loader's own listing (nested when a folder link)
    else:
        (ds / "paths.csv").write_text("path\n" + "".join(f"acne/{n}\n" for n in names))
        b = load_batch(ds / "paths.csv")
    return b.records, b.bad


@pytest.mark.parametrize(
    ("kind", "route"),
    [(k, r) for k in ODD for r in ROUTES if not (k in FOLDER_KINDS and r.endswith("csv"))],
)
def test_an_odd_file_gets_the_same_reason_from_the_manifest_and_the_batch_loader(tmp_path, kind, route):
    ds, outside = tmp_path / "ds", tmp_path / "outside"
    (ds / "acne").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(_jpeg(9))
    (ds / "acne" / "good.jpg").write_bytes(_jpeg(1))
    odd = _make_odd(kind, ds / "acne", outside)

    records, bad = _enter(route, ds, ["good.jpg", odd])
    assert records["path"].tolist() == [str(ds / "acne" / "good.jpg")]
    assert bad[["path", "reason"]].values.tolist() == [[str(ds / "acne" / odd), ODD[kind]]]
    if ODD[kind] == "outside_root":
        assert "allow_outside_root=True" in bad["message"].iloc[0]


# --- the root rule, pure -----------------------------------------------------------------------------


def test_dot_dot_in_s3_keys_leads_outside_the_prefix():
    root = "s3://bucket/ds"
    assert not outside_root("s3://bucket/ds/acne/1.jpg", root)
    assert not outside_root("s3://bucket/ds/acne/../tumor/1.jpg", root)  # stays inside once normalised
    for path in (
        "s3://bucket/ds/../secret.jpg",
        "s3://bucket/ds/acne/../../secret.jpg",
        "s3://bucket/ds/..",
        "s3://bucket/ds",
        "s3://bucket/dsx/1.jpg",
        "s3://other/ds/1.jpg",
        "/etc/passwd",
    ):
        assert outside_root(path, root), path
    # a CSV's relative path on S3 is normalised, so the rule sees where it really leads
    assert resolve("../private/x.jpg", root) == "s3://bucket/private/x.jpg"
    assert resolve("acne/./1.jpg", root) == "s3://bucket/ds/acne/1.jpg"
    assert resolve("s3://bucket/ds/../x.jpg", root) == "s3://bucket/ds/../x.jpg"  # absolute: judged as written
    source = Source("s3://bucket/ds/batch.csv", storage=_FakeS3({}, Path("/nowhere")))
    assert source.csv_entry("../private/x.jpg").reason == "outside_root"
    assert source.csv_entry("s3://bucket/ds/../private/x.jpg").reason == "outside_root"
    assert source.csv_entry("acne/1.jpg").reason == ""
    allowed = Source("s3://bucket/ds/batch.csv", storage=_FakeS3({}, Path("/nowhere")), allow_outside_root=True)
    assert allowed.csv_entry("../private/x.jpg").reason == ""


class _FakeS3:
    """The few Storage calls a source makes, over a dict of ``s3://`` URIs (records what was read)."""

    def __init__(self, objects: dict[str, bytes], data_root: Path) -> None:
        self.objects = objects
        self.settings = SimpleNamespace(data_root=data_root)
        self.read: list[str] = []

    def get_bytes(self, uri: str) -> bytes:
        self.read.append(uri)
        if uri not in self.objects:
            raise ObjectNotFoundError(f"no such object: {uri}")
        return self.objects[uri]

    def exists(self, uri: str) -> bool:
        return uri in self.objects

    def list(self, prefix: str) -> list[str]:
        return sorted(k for k in self.objects if k.startswith(prefix))


def test_s3_csv_rows_are_judged_alike_by_the_batch_loader_and_the_manifest(tmp_path):
    objects = {
        "s3://b/ds/acne/ok.jpg": _jpeg(1),
        "s3://b/ds/acne/empty.jpg": b"",
        "s3://b/private/x.jpg": _jpeg(2),
        "s3://b/ds/paths.csv": b"path\nacne/ok.jpg\nacne/empty.jpg\n../private/x.jpg\ns3://b/ds/../private/x.jpg\n"
        b"acne/gone.jpg\n",
        "s3://b/ds/labels.csv": b"path,label\nacne/ok.jpg,acne\nacne/empty.jpg,acne\n../private/x.jpg,acne\n"
        b"s3://b/ds/../private/x.jpg,acne\nacne/gone.jpg,acne\n",
    }
    expected = [
        ["s3://b/ds/../private/x.jpg", "outside_root"],
        ["s3://b/ds/acne/empty.jpg", "zero_bytes"],
        ["s3://b/ds/acne/gone.jpg", "missing_file"],
        ["s3://b/private/x.jpg", "outside_root"],
    ]
    store = _FakeS3(objects, tmp_path / "data")
    batch = load_batch("s3://b/ds/paths.csv", storage=store)
    assert batch.records["path"].tolist() == ["s3://b/ds/acne/ok.jpg"]
    assert batch.bad[["path", "reason"]].values.tolist() == expected
    manifest = build_manifest("s3://b/ds/labels.csv", storage=store)
    assert manifest.records["path"].tolist() == ["s3://b/ds/acne/ok.jpg"]
    assert manifest.bad[["path", "reason"]].values.tolist() == expected
    assert not [u for u in store.read if "private" in u], "a file outside the root was read"
    local = Path(batch.records["local_path"].iloc[0])
    assert local == Path(manifest.records["local_path"].iloc[0])  # one cache for both
    assert (
        local.is_relative_to(tmp_path / "data" / "s3cache") and local.read_bytes() == objects["s3://b/ds/acne/ok.jpg"]
    )


# --- the download cache --------------------------------------------------------------------------------


def _files_under(folder: Path) -> list[str]:
    return sorted(os.path.join(here, f) for here, _, files in os.walk(folder) for f in files)


def test_a_download_cache_write_that_fails_leaves_no_file(tmp_path, monkeypatch):
    data = _jpeg(5)
    store = _FakeS3({"s3://b/ds/a/1.JPG": data}, tmp_path / "data")
    cache = DownloadCache.of(store)
    real_write = Path.write_bytes

    def write_half_then_fail(self: Path, payload: bytes) -> int:
        real_write(self, payload[: len(payload) // 2])
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(Path, "write_bytes", write_half_then_fail)
    with pytest.raises(StorageError, match="cannot write"):
        cache.fetch("s3://b/ds/a/1.JPG", store)
    assert _files_under(tmp_path / "data") == [], "a partial or temporary file was left"
    monkeypatch.undo()

    local = cache.fetch("s3://b/ds/a/1.JPG", store)
    digest = hashlib.sha256(data).hexdigest()
    assert local == tmp_path / "data" / "s3cache" / digest[:2] / f"{digest}.jpg"
    assert local.read_bytes() == data and _files_under(tmp_path / "data") == [str(local)]
    mtime = local.stat().st_mtime_ns
    assert cache.put(data, "other/name.jpg") == local and local.stat().st_mtime_ns == mtime  # reused, not rewritten


def test_a_batch_stops_when_its_download_cannot_be_written(tmp_path, monkeypatch):
    store = _FakeS3({"s3://b/flat/1.jpg": _jpeg(1), "s3://b/flat/2.jpg": _jpeg(2)}, tmp_path / "data")

    def full(self: Path, payload: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(StorageError, match="no space"):
        load_batch("s3://b/flat", storage=store)
    assert _files_under(tmp_path / "data") == []


# --- one decode per batch image ------------------------------------------------------------------------


@pytest.fixture()
def counted(monkeypatch):
    """Decodes (``ml.data.images._decode``) and ``PIL.Image.open`` calls, per file name."""
    import PIL.Image

    import ml.data.images as images

    decoded, opened = Counter(), Counter()
    real_decode, real_open = images._decode, PIL.Image.open

    def decode(data, name, *args, **kwargs):
        decoded[name] += 1
        return real_decode(data, name, *args, **kwargs)

    def open_(fp, *args, **kwargs):
        opened["open"] += 1
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(images, "_decode", decode)
    monkeypatch.setattr(PIL.Image, "open", open_)
    return decoded, opened


def _batch_folders(root: Path) -> dict[str, Path]:
    for i in range(3):
        (root / "sd" / "Acne_Vulgaris").mkdir(parents=True, exist_ok=True)
        (root / "sd" / "Acne_Vulgaris" / f"a{i}.jpg").write_bytes(_jpeg(i))
    (root / "sd" / "Unknown_Rash").mkdir()
    (root / "sd" / "Unknown_Rash" / "u0.jpg").write_bytes(_jpeg(10))
    (root / "sd" / "stray.jpg").write_bytes(_jpeg(11))  # above the class folders: read by the batch loader
    (root / "sd" / "Acne_Vulgaris" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0" + b"\0" * 40)
    (root / "flat").mkdir()
    for i in range(3):
        (root / "flat" / f"f{i}.jpg").write_bytes(_jpeg(20 + i))
    (root / "flat" / "paths.csv").write_text("path\nf0.jpg\nf1.jpg\nf2.jpg\n")
    return {"imagefolder": root / "sd", "unlabelled": root / "flat", "csv-unlabelled": root / "flat" / "paths.csv"}


@pytest.mark.parametrize("layout", ["imagefolder", "unlabelled", "csv-unlabelled"])
def test_each_batch_image_is_decoded_once_and_its_pixels_come_from_that_decode(tmp_path, counted, layout):
    decoded, opened = counted
    source = _batch_folders(tmp_path)[layout]
    batch = load_batch(source, "sd198_to_10")
    assert batch.layout == layout and len(batch.records) == {"imagefolder": 5}.get(layout, 3)
    images = set(batch.records["local_path"])
    assert {name: n for name, n in decoded.items() if name in images} == dict.fromkeys(images, 1)
    assert sum(decoded.values()) == len(images) + len(batch.bad)  # Thumbs.db: decoded once, refused
    assert opened["open"] == len(images) + len(batch.bad)  # one PIL open per file (the check reads its header there)

    decoded.clear()
    opened.clear()
    pixels: dict[str, np.ndarray] = {}
    again = load_batch(source, "sd198_to_10", on_image=lambda path, rgb: pixels.__setitem__(path, np.asarray(rgb)))
    assert again.records.equals(batch.records)
    assert sum(decoded.values()) == len(images) + len(batch.bad)  # still one decode each, pixels included
    assert set(pixels) == set(batch.records["path"])
    for path, local in zip(batch.records["path"], batch.records["local_path"], strict=True):
        assert np.array_equal(pixels[path], np.asarray(load_rgb(local)))


def test_hidden_images_are_said_not_silently_skipped(tmp_path, caplog):
    from PIL import Image

    from ml.data.manifest import build_manifest

    for rel in ("acne/a.jpg", "acne/.thumbnails/t1.jpg", "acne/.thumbnails/deep/t2.png", "acne/.secret.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 64), (180, 120, 90)).save(tmp_path / rel)
    (tmp_path / "acne" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (tmp_path / "acne" / "._a.jpg").write_bytes(b"\0\5\26\7 AppleDouble")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    with caplog.at_level("WARNING", logger="ml.data"):
        m = build_manifest(tmp_path)
    assert len(m.records) == 1, "hidden entries are still not read"
    said = [r.getMessage() for r in caplog.records if "hidden" in r.getMessage()]
    assert any("hidden folder acne/.thumbnails holds 2 image file(s), not read" in line for line in said), said
    assert any("hidden file acne/.secret.jpg is not read" in line for line in said), said
    assert not any(".DS_Store" in line or "._a.jpg" in line or ".git" in line for line in said), said


def test_what_reading_warns_of_is_kept_as_notes_and_listed_on_the_summary_page(tmp_path):
    """Issue #24: the lines said about a source that are not bad files (a hidden folder of images, a
    JPEG named .png, data appended after a JPEG's end) are the manifest's notes, saved with it and
    listed on the validation summary page, not only printed to the console."""
    import pandas as pd
    from PIL import Image

    from ml.data.manifest import Manifest, build_manifest
    from ml.quality.report import ValidationReport, report_html

    for rel in ("acne/a.jpg", "acne/.thumbnails/t1.jpg", "blister/b.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 64), (180, 120, 90)).save(tmp_path / rel)
    Image.new("RGB", (64, 64), (90, 120, 180)).save(tmp_path / "blister" / "looks_like.png", format="JPEG")
    with (tmp_path / "acne" / "a.jpg").open("ab") as f:
        f.write(b"PK\3\4" + bytes(2000))  # a zip appended: more than padding
    m = build_manifest(tmp_path)
    assert len(m.records) == 3
    notes = "\n".join(m.notes)
    assert "hidden folder acne/.thumbnails holds 1 image file(s)" in notes
    assert "looks_like.png: a JPEG file with a .png extension" in notes
    assert "a.jpg: 2004 bytes after the JPEG's end" in notes
    assert Manifest.load(m.save(tmp_path.parent / "m.csv")).notes == m.notes
    page = report_html(ValidationReport([], pd.DataFrame(), pd.DataFrame()), "t", m.notes + ["evil\nskipped: x"])
    assert f"Notes on the data ({len(m.notes) + 1})" in page and "looks_like.png" in page
    assert "evil\\nskipped: x" in page and "evil\nskipped" not in page  # a name cannot forge a line
