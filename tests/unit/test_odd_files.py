"""An ImageFolder holding every odd kind of file goes through build_manifest, split_manifest and
validate_features: each file is either used or reported with its reason, each class folder either
present or reported, and nothing in the tree is modified."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ml.data.manifest import build_manifest
from ml.data.split import split_manifest
from ml.quality.features import compute_features, usable_mask
from ml.quality.validation import load_policy, validate_features

USED, IGNORED = "used", "ignored"
EXPECTED = {
    # plain images, and the odd ones that decode to RGB (modes, EXIF, links inside the root)
    "acne/good_0.jpg": USED,
    "acne/good_1.jpg": USED,
    "acne/good_2.jpg": USED,
    "acne/cmyk.jpg": USED,
    "acne/deep16.png": USED,
    "acne/alpha.png": USED,
    "acne/grey.jpg": USED,
    "acne/palette.png": USED,
    "acne/rotated.jpg": USED,
    "acne/inside_link.jpg": USED,  # a link to acne/good_1.jpg: an exact duplicate
    "tumor/good_0.jpg": USED,
    "tumor/good_1.jpg": USED,
    "tumor/good_2.jpg": USED,
    "tumor/conflict.jpg": USED,  # the bytes of acne/good_2.jpg: a label conflict, named by validation
    "tumor/nested/deep.jpg": USED,
    "wheal/good_0.jpg": USED,
    "wheal/good_1.jpg": USED,
    "wheal/good_2.jpg": USED,
    # files that cannot be used
    "acne/zero.jpg": "zero_bytes",
    "acne/truncated.jpg": "truncated",
    "acne/text.jpg": "not_an_image",
    "acne/bomb_header.png": "decompression_bomb",  # 100000 x 100000 declared in a 70-byte file
    "acne/bomb_real.png": "decompression_bomb",  # 9500 x 9500 pixels, really there
    "acne/anim.gif": "unsupported_format",
    "acne/anim.webp": "unsupported_format",  # an animated WebP is not a photograph
    # the formats clinics export are used like JPEG: TIFF (8-bit, 16-bit, CMYK, multi-page: page 1), BMP, WebP
    "acne/photo.webp": USED,
    "acne/scan.tiff": USED,
    "acne/scan16.tif": USED,
    "acne/scan_cmyk.tif": USED,
    "acne/pages.tif": USED,
    "acne/old.bmp": USED,
    "acne/broken_link.jpg": "broken_symlink",
    "acne/outside_link.jpg": "outside_root",
    "acne/pipe.jpg": "not_a_file",  # a FIFO: reading it would block
    "tumor/loop": "symlink_loop",  # a folder link back to the root
    "elsewhere": "outside_root",  # a class folder linked from outside the root: not entered
    "macula/zero.jpg": "zero_bytes",
    "macula/notes.jpg": "not_an_image",  # a class with no usable image
    "stray.jpg": "no_label",
    # the documented rules: hidden files, and non-image files above the class folders
    "acne/.DS_Store": IGNORED,
    "README.md": IGNORED,
}
EMPTY_CLASSES = ["elsewhere", "macula", "ulcer"]  # ulcer/ is an empty folder
CLASSES = ["acne", "tumor", "wheal"]
NEVER_OPENED = ("broken_symlink", "outside_root", "not_a_file", "symlink_loop")


def _noise(seed: int, size: int = 32, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).convert(mode)


def _encoded(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width x height`` RGB pixels and holds almost none."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def _odd_files(root: Path, outside: Path) -> None:
    """The tree of EXPECTED, plus an empty class folder and files outside the root to link to."""
    for d in ("acne", "tumor/nested", "wheal", "macula", "ulcer"):
        (root / d).mkdir(parents=True, exist_ok=True)
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(_encoded(_noise(900), "JPEG"))
    (outside / "cls").mkdir()
    (outside / "cls" / "a.jpg").write_bytes(_encoded(_noise(901), "JPEG"))
    for ci, label in enumerate(CLASSES):
        for i in range(3):
            (root / label / f"good_{i}.jpg").write_bytes(_encoded(_noise(10 * ci + i), "JPEG", quality=90))
    acne = root / "acne"
    (acne / "cmyk.jpg").write_bytes(_encoded(_noise(40, mode="CMYK"), "JPEG"))
    (acne / "deep16.png").write_bytes(
        _encoded(Image.fromarray(np.random.default_rng(41).integers(0, 65535, (32, 32), dtype=np.uint16)), "PNG")
    )
    (acne / "alpha.png").write_bytes(_encoded(_noise(42, mode="RGBA"), "PNG"))
    (acne / "grey.jpg").write_bytes(_encoded(_noise(43, mode="L"), "JPEG"))
    (acne / "palette.png").write_bytes(_encoded(_noise(44).convert("P"), "PNG"))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display: stored 48 x 32, shown 32 x 48
    (acne / "rotated.jpg").write_bytes(_encoded(_noise(45, size=48).crop((0, 0, 48, 32)), "JPEG", exif=exif.tobytes()))
    (acne / "inside_link.jpg").symlink_to("good_1.jpg")
    (root / "tumor" / "conflict.jpg").write_bytes((acne / "good_2.jpg").read_bytes())
    (root / "tumor" / "nested" / "deep.jpg").write_bytes(_encoded(_noise(46), "JPEG"))
    (acne / "zero.jpg").write_bytes(b"")
    good = _encoded(_noise(47, size=64), "JPEG")
    (acne / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (acne / "text.jpg").write_text("a text file with a .jpg name\n")
    (acne / "bomb_header.png").write_bytes(_png_header_only(100_000, 100_000))
    (acne / "bomb_real.png").write_bytes(_encoded(Image.new("1", (9500, 9500)), "PNG"))
    for name, fmt in (("anim.gif", "GIF"), ("photo.webp", "WEBP"), ("scan.tiff", "TIFF"), ("old.bmp", "BMP")):
        (acne / name).write_bytes(_encoded(_noise(50 + len(name)), fmt))
    deep = (np.asarray(_noise(70, mode="L"), dtype=np.uint16) * 257).astype(np.uint16)
    (acne / "scan16.tif").write_bytes(_encoded(Image.fromarray(deep), "TIFF"))
    (acne / "scan_cmyk.tif").write_bytes(_encoded(_noise(71, mode="CMYK"), "TIFF"))
    (acne / "pages.tif").write_bytes(_encoded(_noise(72), "TIFF", save_all=True, append_images=[_noise(73)]))
    frames = [_noise(74 + i) for i in range(3)]
    (acne / "anim.webp").write_bytes(_encoded(frames[0], "WEBP", save_all=True, append_images=frames[1:]))
    (acne / "broken_link.jpg").symlink_to("deleted.jpg")
    (acne / "outside_link.jpg").symlink_to(outside / "secret.jpg")
    os.mkfifo(acne / "pipe.jpg")
    (acne / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "tumor" / "loop").symlink_to(root)
    (root / "elsewhere").symlink_to(outside / "cls")
    (root / "macula" / "zero.jpg").write_bytes(b"")
    (root / "macula" / "notes.jpg").write_text("notes")
    (root / "stray.jpg").write_bytes(_encoded(_noise(60), "JPEG"))
    (root / "README.md").write_text("the odd-files data set\n")


def _tree(root: Path) -> dict[str, str]:
    """Every entry but real folders (files, links, FIFOs), relative, with a digest of what it is,
    read without following links or opening FIFOs."""
    out = {}
    for here, dirnames, filenames in os.walk(root):
        for name in [*filenames, *(d for d in dirnames if (Path(here) / d).is_symlink())]:
            path = Path(here) / name
            mode = path.lstat().st_mode
            kind = (
                "link:" + os.readlink(path)
                if stat.S_ISLNK(mode)
                else hashlib.sha256(path.read_bytes()).hexdigest()
                if stat.S_ISREG(mode)
                else f"mode:{mode:o}"
            )
            out[path.relative_to(root).as_posix()] = kind
    return out


@pytest.fixture()
def odd(tmp_path: Path) -> tuple[Path, Path]:
    root, outside = tmp_path / "ds", tmp_path / "outside"
    _odd_files(root, outside)
    return root, outside


def _outcomes(records: pd.DataFrame, bad: pd.DataFrame, root: Path) -> dict[str, str]:
    def rel(p):
        return Path(p).relative_to(root).as_posix()

    used = [rel(p) for p in records["path"]]
    reported = [(rel(p), r) for p, r in zip(bad["path"], bad["reason"], strict=True)]
    assert len(set(used)) == len(used) and len({p for p, _ in reported}) == len(reported), "a file counted twice"
    assert not set(used) & {p for p, _ in reported}, "a file both used and reported"
    return {**dict.fromkeys(used, USED), **dict(reported)}


def test_every_file_is_used_or_reported_and_every_class_present_or_reported(odd) -> None:
    root, outside = odd
    before = {**_tree(root), **{f"../outside/{k}": v for k, v in _tree(outside).items()}}
    assert set(EXPECTED) == set(_tree(root)), "the table must name every entry of the tree"

    manifest = build_manifest(root)
    split = split_manifest(manifest, val_frac=0.25, seed=0)
    assert _outcomes(split.records, split.bad, root) == {k: v for k, v in EXPECTED.items() if v != IGNORED}
    assert set(split.records["split"]) == {"train", "val"}
    assert split.classes == CLASSES and split.empty_classes == EMPTY_CLASSES and split.missing_classes == []
    assert split.summary()["empty_classes"] == EMPTY_CLASSES
    report_text = split.bad_report(limit=100)
    assert all(f"{p}: {r}" in report_text for p, r in EXPECTED.items() if r not in (USED, IGNORED))

    features = compute_features(split.all_files(), workers=1)
    by_rel = features.assign(rel=features["path"].map(lambda p: Path(p).relative_to(root).as_posix())).set_index("rel")
    assert (by_rel["sha256"][[p for p, r in EXPECTED.items() if r in NEVER_OPENED]].isna()).all()
    assert by_rel.loc["acne/rotated.jpg", ["width", "height"]].tolist() == [32, 48]
    assert dict(zip(by_rel.index, usable_mask(features), strict=True)) == {
        p: r == USED for p, r in EXPECTED.items() if r != IGNORED
    }

    report = validate_features(features, load_policy(), split.expected_classes)
    named = _outcomes(pd.DataFrame({"path": features["path"][usable_mask(features)]}), report.bad_files, root)
    assert named == {k: v for k, v in EXPECTED.items() if v != IGNORED}
    counts = report.outcome("min_per_class").details["values"]
    assert counts == split.records["label"].value_counts().to_dict() == {"acne": 16, "tumor": 5, "wheal": 3}
    assert report.outcome("classes_present").success and report.outcome("min_classes").observed == 3
    decodes = report.outcome("decodes")
    assert {Path(e["id"]).name: e["reason"] for e in decodes.details["examples"]}["pipe.jpg"] == "not_a_file"
    assert decodes.observed == len(decodes.details["examples"]) + decodes.details["n_more"]
    formats = {Path(e["id"]).name: e["value"] for e in report.outcome("format_allowed").details["examples"]}
    assert formats == {"anim.gif": "GIF"}, "TIFF, BMP and still WebP are formats clinics export: allowed"
    assert set(report.label_conflicts["path"]) == {str(root / "acne/good_2.jpg"), str(root / "tumor/conflict.jpg")}
    assert sorted(sorted(map(str, g)) for g in report.duplicate_groups["paths"]) == [
        [str(root / "acne/good_1.jpg"), str(root / "acne/inside_link.jpg")],
        [str(root / "acne/good_2.jpg"), str(root / "tumor/conflict.jpg")],
    ]
    page = report.to_html()
    assert all(Path(p).name in page for p, r in EXPECTED.items() if r not in (USED, IGNORED))
    assert not report.passed

    after = {**_tree(root), **{f"../outside/{k}": v for k, v in _tree(outside).items()}}
    assert after == before, "the originals must not be modified"


def test_csv_rows_with_common_mistakes_are_each_used_or_reported(odd) -> None:
    root, outside = odd
    good = [p for p, r in EXPECTED.items() if r == USED and p.count("/") == 1]
    rows = [(p, p.split("/")[0]) for p in good] + [
        ("/etc/passwd", "acne"),
        ("../outside/secret.jpg", "acne"),
        (str(outside / "cls" / "a.jpg"), "tumor"),
        (good[0], good[0].split("/")[0]),  # listed twice
        ("acne/zero.jpg", ""),  # no label
        ("acne/gone.jpg", "acne"),  # missing
        ("acne/broken_link.jpg", "acne"),
        ("acne/pipe.jpg", "acne"),
        ("acne/outside_link.jpg", "acne"),
    ]
    pd.DataFrame(rows, columns=["path", "label"]).to_csv(root / "rows.csv", index=False)
    before = _tree(outside)
    m = build_manifest(root / "rows.csv")
    assert len(m.records) + len(m.bad) == len(rows)
    assert sorted(Path(p).relative_to(root).as_posix() for p in m.records["path"]) == sorted(good)
    reasons = dict(zip(m.bad["path"], m.bad["reason"], strict=True))
    assert reasons == {
        "/etc/passwd": "outside_root",
        str(outside / "secret.jpg"): "outside_root",
        str(outside / "cls" / "a.jpg"): "outside_root",
        str(root / good[0]): "duplicate_entry",
        str(root / "acne/zero.jpg"): "no_label",
        str(root / "acne/gone.jpg"): "missing_file",
        str(root / "acne/broken_link.jpg"): "broken_symlink",
        str(root / "acne/pipe.jpg"): "not_a_file",
        str(root / "acne/outside_link.jpg"): "outside_root",
    }
    assert _tree(outside) == before
