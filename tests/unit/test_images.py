"""ml.data.images: EXIF orientation, mode conversion to 8-bit RGB, and every bad-file reason."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml.data.images import BadImageError, check_image, load_rgb


def _jpeg_bytes(img: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, **kwargs)
    return buf.getvalue()


def _marked(width: int = 40, height: int = 20) -> Image.Image:
    """A grey image with a red block in the top-left corner, to follow rotations."""
    arr = np.full((height, width, 3), 128, np.uint8)
    arr[:8, :8] = (255, 0, 0)
    return Image.fromarray(arr)


def test_exif_orientation_6_rotates_the_image(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rot.jpg"
    path.write_bytes(_jpeg_bytes(_marked(), exif=exif.tobytes()))

    raw = Image.open(path)
    assert raw.size == (40, 20)
    img = load_rgb(path)
    assert img.size == (20, 40)
    arr = np.asarray(img).astype(int)
    # Rotated clockwise: the top-left red block moves to the top-right corner.
    assert arr[3, 16, 0] > 200 and arr[3, 16, 1] < 60
    assert arr[3, 3, 0] < 180 and abs(arr[3, 3, 0] - arr[3, 3, 2]) < 30


@pytest.mark.parametrize(
    ("mode", "make"),
    [
        ("L", lambda: Image.new("L", (8, 6), 200)),
        ("LA", lambda: Image.new("LA", (8, 6), (10, 0))),
        ("P", lambda: Image.new("RGB", (8, 6), (0, 0, 255)).convert("P")),
        ("RGBA", lambda: Image.new("RGBA", (8, 6), (255, 0, 0, 0))),
        ("CMYK", lambda: Image.new("CMYK", (8, 6), (0, 255, 255, 0))),
        ("I;16", lambda: Image.fromarray(np.full((6, 8), 65535, np.uint16))),
        ("I", lambda: Image.fromarray(np.full((6, 8), 32768, np.int32))),
    ],
)
def test_every_mode_becomes_8bit_rgb(mode: str, make) -> None:
    src = make()
    assert src.mode == mode
    buf = io.BytesIO()
    src.save(buf, format="TIFF")
    img = load_rgb(buf.getvalue())
    assert img.mode == "RGB" and img.size == (8, 6)
    pixel = np.asarray(img)[0, 0].tolist()
    expected = {
        "L": [200, 200, 200],
        "LA": [255, 255, 255],  # fully transparent -> the white background
        "P": [0, 0, 255],
        "RGBA": [255, 255, 255],
        "CMYK": [255, 0, 0],
        "I;16": [255, 255, 255],  # 16-bit full scale -> 8-bit full scale
        "I": [128, 128, 128],  # 32768 of 65535 -> 128 of 255
    }[mode]
    assert pixel == expected


def test_semi_transparent_rgba_is_composited_on_white() -> None:
    buf = io.BytesIO()
    Image.new("RGBA", (4, 4), (0, 0, 0, 128)).save(buf, format="PNG")
    assert np.asarray(load_rgb(buf.getvalue()))[0, 0].tolist() == [127, 127, 127]


def test_good_jpeg_and_png_pass_the_check(tmp_path: Path) -> None:
    for fmt, name in (("JPEG", "a.jpg"), ("PNG", "b.png")):
        _marked().save(tmp_path / name, format=fmt)
        result = check_image(tmp_path / name)
        assert result.ok and result.reason == ""
        assert (result.width, result.height, result.format, result.mode) == (40, 20, fmt, "RGB")
        assert result.bytes == (tmp_path / name).stat().st_size


def _write_bad(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.jpg"
    if kind == "zero_bytes":
        path.write_bytes(b"")
    elif kind == "truncated":
        rng = np.random.default_rng(0)
        data = _jpeg_bytes(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)))
        path.write_bytes(data[: len(data) // 2])
    elif kind == "not_an_image":
        path.write_text("this is a text file with a .jpg name\n")
    elif kind == "unsupported_format":
        path = tmp_path / "x.gif"
        _marked().save(path, format="GIF")
    return path


@pytest.mark.parametrize("reason", ["zero_bytes", "truncated", "not_an_image", "unsupported_format"])
def test_bad_files_are_reported_with_their_reason(tmp_path: Path, reason: str) -> None:
    path = _write_bad(tmp_path, reason)
    result = check_image(path)
    assert not result.ok
    assert result.reason == reason
    assert path.name in result.message or reason == "unsupported_format"
    assert result.bytes == path.stat().st_size


def _clinic_file(tmp_path: Path, kind: str) -> Path:
    rgb = _marked()
    if kind == "bmp":
        rgb.save(path := tmp_path / "x.bmp", format="BMP")
    elif kind == "tiff":
        rgb.save(path := tmp_path / "x.tif", format="TIFF")
    elif kind == "tiff16":
        grey = np.asarray(rgb.convert("L"), dtype=np.uint16) * 257
        Image.fromarray(grey).save(path := tmp_path / "x16.tif", format="TIFF")
    elif kind == "tiff_cmyk":
        rgb.convert("CMYK").save(path := tmp_path / "cmyk.tif", format="TIFF")
    elif kind == "webp":
        rgb.save(path := tmp_path / "x.webp", format="WEBP", lossless=True)
    elif kind == "png_alpha":
        rgb.convert("RGBA").save(path := tmp_path / "alpha.png")
    return path


@pytest.mark.parametrize("kind", ["bmp", "tiff", "tiff16", "tiff_cmyk", "webp", "png_alpha"])
def test_the_formats_clinics_export_are_used_with_the_same_handling(tmp_path: Path, kind: str) -> None:
    path = _clinic_file(tmp_path, kind)
    result = check_image(path)
    assert result.ok, result.message
    rgb = load_rgb(path)
    assert rgb.mode == "RGB" and rgb.size == (40, 20)


def test_a_multi_page_tiff_uses_its_first_page_and_says_how_many(tmp_path: Path, caplog) -> None:
    first, second = _marked(), Image.new("RGB", (40, 20), (0, 0, 255))
    path = tmp_path / "pages.tif"
    first.save(path, format="TIFF", save_all=True, append_images=[second, second])
    with caplog.at_level("WARNING", logger="ml.data"):
        assert check_image(path).ok
    assert "a TIFF of 3 pages: the first page is used" in caplog.text
    assert np.array_equal(np.asarray(load_rgb(path)), np.asarray(first.convert("RGB")))


def test_an_animated_webp_is_not_a_still_image(tmp_path: Path) -> None:
    path = tmp_path / "anim.webp"
    frames = [Image.new("RGB", (40, 20), (i * 60, 0, 0)) for i in range(3)]
    frames[0].save(path, format="WEBP", save_all=True, append_images=frames[1:], duration=100)
    result = check_image(path)
    assert (result.ok, result.reason) == (False, "unsupported_format") and "3 frames" in result.message


def test_decompression_bomb_limit_is_configurable(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 100)).save(path)
    assert check_image(path).ok
    result = check_image(path, max_pixels=5_000)
    assert (result.ok, result.reason) == (False, "decompression_bomb")
    assert "10000" in result.message and "5000" in result.message
    with pytest.raises(BadImageError) as err:
        load_rgb(path, max_pixels=5_000)
    assert err.value.reason == "decompression_bomb"


@pytest.mark.parametrize("reason", ["zero_bytes", "truncated", "not_an_image"])
def test_load_rgb_raises_bad_image_error_naming_the_file(tmp_path: Path, reason: str) -> None:
    path = _write_bad(tmp_path, reason)
    with pytest.raises(BadImageError) as err:
        load_rgb(path)
    assert err.value.reason == reason
    assert str(path) in str(err.value)


def test_missing_file_is_reported_not_a_crash(tmp_path: Path) -> None:
    result = check_image(tmp_path / "nope.jpg")
    assert (result.ok, result.reason) == (False, "missing_file")
    assert "nope.jpg" in result.message


def test_file_cut_inside_its_header_is_reported_as_truncated(tmp_path):
    """A tiny JPEG cut in half loses part of its header: still a truncation, not 'unreadable'."""
    import io

    from PIL import Image

    from ml.data.images import check_image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 120, 100)).save(buf, "JPEG")
    data = buf.getvalue()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    check = check_image(path)
    assert not check.ok and check.reason == "truncated", check


def test_check_reports_the_displayed_size_of_an_exif_rotated_image(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display: the stored 40x20 shows as 20x40
    path = tmp_path / "rot.jpg"
    path.write_bytes(_jpeg_bytes(_marked(40, 20), exif=exif.tobytes()))
    result = check_image(path)
    assert result.ok and (result.width, result.height) == (20, 40) == load_rgb(path).size


def test_links_folders_and_fifos_are_reported_without_reading_them(tmp_path: Path) -> None:
    import os

    (tmp_path / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (tmp_path / "folder.jpg").mkdir()
    os.mkfifo(tmp_path / "pipe.jpg")  # reading it would block for ever
    reasons = {name: check_image(tmp_path / name) for name in ("gone.jpg", "folder.jpg", "pipe.jpg")}
    assert {n: r.reason for n, r in reasons.items()} == {
        "gone.jpg": "broken_symlink",
        "folder.jpg": "not_a_file",
        "pipe.jpg": "not_a_file",
    }
    assert "nowhere.jpg" in reasons["gone.jpg"].message and "FIFO" in reasons["pipe.jpg"].message
    with pytest.raises(BadImageError) as err:
        load_rgb(tmp_path / "pipe.jpg")
    assert err.value.reason == "not_a_file"


@pytest.mark.parametrize("brand,kind", [(b"heic", "HEIC"), (b"mif1", "HEIF")])
def test_a_phone_photo_pillow_cannot_open_is_named_with_how_to_convert(tmp_path, brand, kind):
    path = tmp_path / "IMG_0001.HEIC"
    path.write_bytes(b"\x00\x00\x00\x18ftyp" + brand + b"\x00\x00\x00\x00mif1heic" + bytes(200))
    with pytest.raises(BadImageError) as exc:
        load_rgb(path)
    assert exc.value.reason == "unsupported_format"
    assert f"a {kind} image" in exc.value.message and "convert it to JPEG or PNG" in exc.value.message
    assert "BytesIO" not in str(exc.value)
    check = check_image(path)
    assert not check.ok and check.reason == "unsupported_format" and kind in check.message


def test_an_unknown_file_says_no_format_matched_not_an_object_repr(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_bytes(b"just some text, not an image")
    with pytest.raises(BadImageError) as exc:
        load_rgb(path)
    assert exc.value.reason == "not_an_image" and "BytesIO" not in str(exc.value)


def test_a_jpeg_named_png_and_a_jpeg_with_a_zip_appended_are_used_and_said(tmp_path: Path, caplog) -> None:
    lying = tmp_path / "photo.png"
    _marked().save(lying, format="JPEG")
    appended = tmp_path / "with_zip.jpg"
    appended.write_bytes(_jpeg_bytes(_marked()) + b"PK\x03\x04" + bytes(4000))
    with caplog.at_level("WARNING", logger="ml.data"):
        assert check_image(lying).ok and check_image(appended).ok
    assert f"{lying}: a JPEG file with a .png extension; read as JPEG" in caplog.text
    assert f"{appended}: 4004 bytes after the JPEG's end (appended data)" in caplog.text
    caplog.clear()
    plain = tmp_path / "plain.jpg"
    _marked().save(plain, format="JPEG")
    with caplog.at_level("WARNING", logger="ml.data"):
        assert check_image(plain).ok
    assert caplog.text == "", "an ordinary JPEG says nothing"
