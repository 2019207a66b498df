"""Robust decoding of one image: EXIF orientation, any mode to 8-bit RGB, and a never-raising check."""

from __future__ import annotations

import io
import logging
import os
import stat
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 89_478_485
"""Default decompression-bomb limit (Pillow's default): images with more pixels are refused.
Pillow itself refuses twice its ``Image.MAX_IMAGE_PIXELS`` whatever the limit given here."""

logger = logging.getLogger("ml.data")
ALLOWED_FORMATS = ("JPEG", "PNG", "TIFF", "BMP", "WEBP", "MPO")
"""What clinics export: JPEG (and its multi-picture MPO variant), PNG, TIFF (first page), BMP and still
WebP; each gets the same size, EXIF and colour-mode handling. Animated WebP, like GIF, is not a photograph."""

ImageSource = str | Path | bytes

REASONS = (
    "zero_bytes",
    "truncated",
    "not_an_image",
    "decompression_bomb",
    "unsupported_format",
    "unreadable",
    "missing_file",
    "broken_symlink",
    "not_a_file",
)


# ISO base media files (HEIC/HEIF from phones, AVIF) carry "ftyp" and a brand at bytes 4-12.
_FTYP_BRANDS = {
    b"heic": "HEIC",
    b"heix": "HEIC",
    b"hevc": "HEIC",
    b"heim": "HEIC",
    b"heis": "HEIC",
    b"mif1": "HEIF",
    b"msf1": "HEIF",
    b"avif": "AVIF",
}


_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF8", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)


def image_signature(head: bytes) -> str | None:
    """The image format the first bytes of a file announce (JPEG, PNG, GIF, TIFF, BMP, WEBP, HEIC/HEIF/AVIF),
    whatever its name says; None for anything else."""
    for magic, fmt in _SIGNATURES:
        if head.startswith(magic):
            return fmt
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:8] == b"ftyp" and head[8:12] in _FTYP_BRANDS:
        return _FTYP_BRANDS[head[8:12]]
    return None


def container_format(data: bytes) -> str | None:
    """What a file Pillow cannot open is, when its signature says so, with how to convert it;
    None when nothing is recognised."""
    if data[4:8] == b"ftyp" and data[8:12] in _FTYP_BRANDS:
        kind = _FTYP_BRANDS[data[8:12]]
        return (
            f"a {kind} image (phone photo format), which skinflow does not decode: convert it to JPEG or PNG, "
            "e.g. `heif-convert photo.heic photo.jpg` (libheif) or macOS `sips -s format jpeg photo.heic --out photo.jpg`"
        )
    return None


class BadImageError(ValueError):
    """An image that cannot be used; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class ImageCheck:
    """Outcome of :func:`check_image`; ``reason``/``message`` are empty when ``ok``."""

    ok: bool
    reason: str
    width: int
    height: int
    mode: str
    format: str
    bytes: int
    message: str = ""


def path_problem(path: str | Path) -> tuple[str, str] | None:
    """``(reason, message)`` when ``path`` cannot be read as one image file, found without reading it:
    ``missing_file``, ``broken_symlink`` (a link whose target is gone) or ``not_a_file`` (a folder, or a
    FIFO, socket or device, which could block or never end); None for a regular file (or a link to one)."""
    path = Path(path)
    try:
        if path.is_file():
            return None
        if path.is_symlink() and not path.exists():
            return "broken_symlink", f"{path}: symbolic link to {os.readlink(path)}, which does not exist"
        if not path.exists():
            return "missing_file", f"no such file: {path}"
        return "not_a_file", f"{path}: not a regular file ({_file_kind(path)})"
    except OSError as exc:
        return "unreadable", f"{path}: cannot inspect the file ({exc})"


def _file_kind(path: Path) -> str:
    mode = path.stat().st_mode
    kinds = (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    return next((name for test, name in kinds if test(mode)), "a special file")


def _open_bytes(src: ImageSource) -> tuple[bytes, str]:
    """Read the raw bytes of ``src`` and a name for messages (only regular files are read)."""
    if isinstance(src, bytes):
        return src, "<bytes>"
    path = Path(src)
    problem = path_problem(path)
    if problem is not None:
        raise BadImageError(*problem)
    try:
        return path.read_bytes(), str(path)
    except OSError as exc:
        raise BadImageError("unreadable", f"{path}: cannot read file ({exc})") from exc


def _decode(
    data: bytes, name: str, max_pixels: int | None, max_side: int | None = None
) -> tuple[Image.Image, tuple[int, int]]:
    """Open and fully decode ``data`` (one ``Image.open``), mapping every failure to a :class:`BadImageError`;
    returns the image and the (width, height) stored in its header.

    The pixel limit is checked from the header, before decoding. (No ``warnings`` filter is used for
    Pillow's own DecompressionBombWarning: filters are process-wide and this runs in threads.)
    With ``max_side``, a JPEG larger than that is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that
    keeps its long side at least ``max_side`` (:func:`draft_size`, :meth:`PIL.Image.Image.draft`): every
    coefficient is still read, so truncated files fail as in a full decode, but the inverse DCT and colour
    conversion run on fewer pixels. The mode, the header size and the EXIF orientation are those of the
    stored image.
    """
    if not data:
        raise BadImageError("zero_bytes", f"{name}: file is empty")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        known = container_format(data)
        if known:  # Pillow cannot open it, but what it is can be named (and how to convert it)
            raise BadImageError("unsupported_format", f"{name}: {known}") from None
        raise BadImageError("not_an_image", f"{name}: not a recognised image (no image format's signature)") from None
    except Image.DecompressionBombError as exc:
        raise BadImageError("decompression_bomb", f"{name}: {exc}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        reason = "truncated" if "truncated" in str(exc).lower() else "unreadable"
        raise BadImageError(reason, f"{name}: cannot parse the header ({exc})") from exc
    _check_pixels(img, name, max_pixels)
    header = img.size
    draft = None if max_side is None or img.format != "JPEG" else draft_size(*header, max_side)
    if draft is not None:
        img.draft(None, draft)
    try:
        img.load()
    except OSError as exc:
        reason = "truncated" if "truncated" in str(exc).lower() else "unreadable"
        raise BadImageError(reason, f"{name}: decoding failed ({exc})") from exc
    except (SyntaxError, ValueError) as exc:
        raise BadImageError("unreadable", f"{name}: decoding failed ({exc})") from exc
    return img, header


def _check_pixels(img: Image.Image, name: str, max_pixels: int | None) -> None:
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    pixels = img.width * img.height
    if pixels > limit:
        raise BadImageError(
            "decompression_bomb", f"{name}: {img.width}x{img.height} = {pixels} pixels exceeds the limit of {limit}"
        )


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (alpha composited on white, 16/32-bit scaled)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _high_depth_to_rgb(img)
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _high_depth_to_rgb(img: Image.Image) -> Image.Image:
    """Scale a 16-bit or 32-bit single-channel image to 8-bit grey by its nominal range."""
    arr = np.asarray(img, dtype=np.float64)
    gray = np.clip(np.rint(arr / _nominal_range(img.mode, arr) * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")


def _nominal_range(mode: str, arr: np.ndarray) -> float:
    """Full-scale value: 65535 for 16-bit modes, else the smallest of 255/65535/peak that holds the data."""
    if mode.startswith("I;16"):
        return 65535.0
    peak = float(arr.max(initial=0.0))
    if peak <= 255.0:
        return 255.0
    return 65535.0 if peak <= 65535.0 else peak


def load_rgb(src: ImageSource, max_pixels: int | None = None) -> Image.Image:
    """Decode ``src`` (path or bytes) fully, apply EXIF orientation and return an 8-bit RGB image.

    Raises :class:`BadImageError` when the data is empty, truncated, not an image or too large.
    """
    data, name = _open_bytes(src)
    img, _ = _decode(data, name, max_pixels)
    img = ImageOps.exif_transpose(img)
    return _to_rgb(img)


EXIF_ORIENTATION = 0x0112
_QUARTER_TURNS = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height


def displayed_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) of ``img`` as shown, i.e. after its EXIF orientation (what :func:`load_rgb` returns)."""
    return (img.height, img.width) if _quarter_turned(img) else (img.width, img.height)


def _quarter_turned(img: Image.Image) -> bool:
    """Whether the EXIF orientation of ``img`` swaps its width and height."""
    try:
        orientation = img.getexif().get(EXIF_ORIENTATION)
    except Exception:  # a broken EXIF block leaves the image as stored
        orientation = None
    return orientation in _QUARTER_TURNS


def _failed(reason: str, message: str, size: int = 0) -> ImageCheck:
    return ImageCheck(False, reason, 0, 0, "", "", size, message)


def check_image(
    path: ImageSource, max_pixels: int | None = None, allowed_formats: tuple[str, ...] = ALLOWED_FORMATS
) -> ImageCheck:
    """Check that ``path`` is a fully decodable JPEG/PNG within the pixel limit. Never raises.

    ``width``/``height`` are the displayed size (after the EXIF orientation), as :func:`load_rgb` decodes it."""
    return inspect_image(path, max_pixels, allowed_formats, convert=False)[0]


def draft_size(width: int, height: int, max_side: int) -> tuple[int, int] | None:
    """The (w, h) to ask :meth:`PIL.Image.Image.draft` for so that a ``width`` x ``height`` image still has a
    long side of at least ``max_side`` after DCT scaling (None when it is not larger than that)."""
    long = max(width, height)
    if long <= max_side:
        return None
    return max(1, width * max_side // long), max(1, height * max_side // long)


def inspect_image(
    path: ImageSource,
    max_pixels: int | None = None,
    allowed_formats: tuple[str, ...] = ALLOWED_FORMATS,
    max_side: int | None = None,
    convert: bool = True,
) -> tuple[ImageCheck, Image.Image | None]:
    """:func:`check_image` and the decoded 8-bit RGB image (EXIF-rotated, as :func:`load_rgb`) from ONE decode
    (one ``Image.open``: the header size comes from the same open); the image is None when the check fails (an ``unsupported_format`` image is still returned).

    With ``max_side``, a JPEG larger than that is decoded at reduced size by DCT scaling (see :func:`_decode`;
    its long side stays >= ``max_side``): for descriptors computed on a downscaled copy anyway. The check's
    ``width``/``height``/``mode`` are always those of the stored image. ``convert=False`` skips the
    orientation and RGB conversion (the image is then None: only the check is wanted)."""
    try:
        data, name = _open_bytes(path)
    except BadImageError as exc:
        return _failed(exc.reason, exc.message), None
    try:
        img, header = _decode(data, name, max_pixels, max_side)
        fmt, mode = img.format or "", img.mode
        found = ImageCheck(True, "", *_shown(header, img), mode, fmt, len(data))
        rgb = _to_rgb(ImageOps.exif_transpose(img)) if convert else None
    except BadImageError as exc:
        return _failed(exc.reason, exc.message, len(data)), None
    except Exception as exc:  # a decoder bug must be reported, not raised
        return _failed("unreadable", f"{name}: {type(exc).__name__}: {exc}", len(data)), None
    if fmt not in allowed_formats:
        message = f"{name}: format {fmt or 'unknown'} is not one of {', '.join(allowed_formats)}"
        return replace(found, ok=False, reason="unsupported_format", message=message), rgb
    _note_oddities(name, fmt, data)
    frames = int(getattr(img, "n_frames", 1) or 1)
    if frames > 1 and fmt in ("WEBP", "GIF"):
        message = f"{name}: an animated {fmt} ({frames} frames), not a still image"
        return replace(found, ok=False, reason="unsupported_format", message=message), rgb
    if frames > 1 and fmt == "TIFF":
        logger.warning("%s: a TIFF of %d pages: the first page is used", name, frames)
    return found, rgb


_SUFFIXES = {
    "JPEG": (".jpg", ".jpeg", ".jpe", ".jfif"),
    "PNG": (".png",),
    "TIFF": (".tif", ".tiff"),
    "BMP": (".bmp",),
    "WEBP": (".webp",),
    "MPO": (".jpg", ".jpeg", ".mpo"),
}
TRAILING_NOTE_BYTES = 1024  # bytes after a JPEG's end marker worth a word (padding is smaller)


def _note_oddities(name: str, fmt: str, data: bytes) -> None:
    """A warning (logger ``ml.data``) for a usable image that is not what it looks like: an
    extension of another format, or data appended after a JPEG's end marker (e.g. a zip)."""
    suffix = os.path.splitext(name)[1].lower()
    if suffix and fmt in _SUFFIXES and suffix not in _SUFFIXES[fmt]:
        logger.warning("%s: a %s file with a %s extension; read as %s", name, fmt, suffix, fmt)
    if fmt in ("JPEG", "MPO"):
        end = data.rfind(b"\xff\xd9")
        trailing = len(data) - (end + 2) if end >= 0 else 0
        if trailing > TRAILING_NOTE_BYTES:
            logger.warning("%s: %d bytes after the JPEG's end (appended data); the image is used", name, trailing)


def _shown(header: tuple[int, int], img: Image.Image) -> tuple[int, int]:
    """The displayed size of the stored image: its header size (a draft decode is smaller), swapped when the
    EXIF orientation turns it a quarter."""
    w, h = header
    return (h, w) if _quarter_turned(img) else (w, h)
