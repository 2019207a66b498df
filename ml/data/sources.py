"""Where input files come from, and the one judgement of each: the rules the manifest
(:mod:`ml.data.manifest`) and the monitor's batch loader (:mod:`ml.monitor.batch`) both apply, so that a
file gets the same reason wherever it enters.

* **Sources** (:class:`Source`): a local folder, an ``s3://`` prefix, or a CSV of paths (relative ones
  against the CSV's folder, :func:`resolve`). A source resolves into :class:`Entry` rows: the file's path
  or URI, its path relative to the source's root, and the reason it is refused unread, if it is.
* **The root rule** (:func:`outside_root`, applied by :meth:`Source.entry` and :meth:`Source.list_folder`):
  the dataset root is the folder or S3 prefix, or the CSV's folder (for a manifest saved by
  ``Manifest.save``, the root of the source its sidecar names: :func:`root_of`). A file outside it (a CSV
  row ``/etc/passwd`` or ``../x.jpg``, a symbolic link leading out, an S3 key whose ``..`` leads out of the
  prefix) is ``outside_root`` and never opened, unless ``allow_outside_root``; a folder link back into a
  folder on its own path is ``symlink_loop`` and not entered.
* **Reading** (:meth:`Source.read`): a refused entry is reported as it is; otherwise the file is fetched
  (a missing file, a broken link, a FIFO are found without reading it: :func:`ml.data.images.path_problem`;
  an S3 object is materialised in the content-addressed :class:`DownloadCache`, written atomically) and,
  when checked, decoded ONCE by :func:`ml.data.images.inspect_image`: the check, and the RGB pixels when a
  caller asks for them (``on_image``), come from that one decode.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import posixpath
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pandas as pd
from PIL import Image
from tqdm import tqdm

from ml.data.images import BadImageError, inspect_image, path_problem
from ml.storage import Storage, atomic_write, is_s3, join, sha256_file

logger = logging.getLogger("ml.data")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp"})
_PHONE_SUFFIXES = (".heic", ".heif")  # not read, but an image a hidden folder should not hide in silence

CACHE_FOLDER = "s3cache"
"""Folder under ``settings.data_root`` holding materialised S3 objects."""

OnImage = Callable[[str, Image.Image], None]
"""``on_image(path, rgb)``: the decoded 8-bit RGB image (EXIF-rotated, as ``load_rgb`` gives it) of a file
that passed its check; called from worker threads."""


# --- paths and the root rule ---------------------------------------------------------------------


def base_of(source: str) -> str:
    """The folder that relative paths of ``source`` refer to: a CSV's folder, else the source itself."""
    return posixpath.dirname(source) if source.lower().endswith(".csv") else source.rstrip("/")


def relative(path: str, base: str) -> str:
    """``path`` relative to ``base`` when it lies under it, else ``path`` as it is."""
    return path[len(base) + 1 :] if path.startswith(base + "/") else path


def resolve(raw: str, base: str) -> str:
    """An absolute path or URI for a CSV entry ``raw`` (relative ones against ``base``; ``..`` in an S3
    key is normalised)."""
    if is_s3(raw):
        return raw
    if is_s3(base) and not os.path.isabs(raw):
        return "s3://" + posixpath.normpath(join(base, raw)[5:])
    return os.path.abspath(os.path.join(base, raw))


def is_within(real: str, root_real: str) -> bool:
    """Whether the resolved path ``real`` lies in (or is) the resolved folder ``root_real``."""
    return os.path.commonpath([real, root_real]) == root_real


def outside_root(path: str, root: str) -> bool:
    """Whether ``path`` lies outside ``root``: local paths after resolving links, S3 keys after
    normalising ``..``; a local path under an S3 root, or the reverse, is outside."""
    if is_s3(path) != is_s3(root):
        return True
    if is_s3(path):
        return not posixpath.normpath(path[5:]).startswith(posixpath.normpath(root[5:]) + "/")
    return not is_within(os.path.realpath(path), os.path.realpath(root))


def root_of(src: str, storage: Storage) -> str:
    """The dataset root of ``src``: its folder (the CSV's folder), or for a manifest saved by
    ``Manifest.save`` (a CSV with a JSON sidecar naming its source and version) the root of that source."""
    sidecar = src[:-4] + ".json"
    if not src.lower().endswith(".csv") or not storage.exists(sidecar):
        return base_of(src)
    try:
        meta = json.loads(storage.get_bytes(sidecar))
    except (ValueError, OSError):
        return base_of(src)
    saved = isinstance(meta, dict) and isinstance(meta.get("source"), str) and "version" in meta
    return base_of(meta["source"]) if saved else base_of(src)


def read_table(data: bytes, name: str) -> pd.DataFrame:
    """A CSV as strings (empty cells ""); raises ValueError naming ``name`` when it does not parse."""
    try:
        return pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"{name}: cannot parse CSV ({exc})") from exc


# --- entries -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One file (or folder not entered) of a source: ``path`` (absolute local path or ``s3://`` URI),
    ``rel`` (relative to the source's root; the path itself when outside it) and, when it is refused
    unread by the root rule, ``reason`` (``outside_root``, ``symlink_loop``) and ``message``."""

    path: str
    rel: str
    reason: str = ""
    message: str = ""

    @property
    def local(self) -> str:
        """The local file to read: the path itself, "" for an S3 object (materialised by :meth:`Source.fetch`)."""
        return "" if is_s3(self.path) else self.path


@dataclass(frozen=True)
class Listing:
    """What a folder listing found: files (entries, refused ones carrying their reason), folders
    entered (relative) and folders not entered (entries with their reason)."""

    root: str
    files: list[Entry]
    folders: list[str]
    refused: list[Entry]

    @property
    def nested(self) -> bool:
        """Whether a sub-folder holds anything (a folder not entered counts): a class-folder layout."""
        return bool(self.refused) or any("/" in rel for rel in [*(e.rel for e in self.files), *self.folders])

    @property
    def top_files(self) -> list[Entry]:
        return [e for e in self.files if "/" not in e.rel]


@dataclass(frozen=True)
class FileResult:
    """What reading an entry gave: usable (``reason`` "") with its local file, SHA-256 and size, or the
    reason it is left out."""

    entry: Entry
    local_path: str = ""
    sha256: str = ""
    bytes: int = 0
    reason: str = ""
    message: str = ""

    @property
    def ok(self) -> bool:
        return not self.reason

    @property
    def path(self) -> str:
        return self.entry.path


# --- the S3 download cache -----------------------------------------------------------------------


class DownloadCache:
    """Content-addressed local copies of S3 objects: ``<folder>/<sha256[:2]>/<sha256><suffix>``; a copy
    is written atomically (:func:`ml.storage.atomic_write`: a failed write leaves no file, partial or
    temporary) and reused when present."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    @classmethod
    def of(cls, storage: Storage) -> DownloadCache:
        """The cache under ``storage.settings.data_root``."""
        return cls(Path(storage.settings.data_root) / CACHE_FOLDER)

    def path_for(self, digest: str, suffix: str) -> Path:
        return self.folder / digest[:2] / f"{digest}{suffix.lower()}"

    def put(self, data: bytes, name: str) -> Path:
        """The local copy of ``data`` (the suffix of ``name`` kept), written if not there yet."""
        local = self.path_for(hashlib.sha256(data).hexdigest(), PurePosixPath(name).suffix)
        if not local.is_file():
            atomic_write(local, data)
        return local

    def fetch(self, uri: str, storage: Storage) -> Path:
        """Download ``uri`` into the cache; a missing object raises :class:`BadImageError` ``missing_file``."""
        try:
            data = storage.get_bytes(uri)
        except FileNotFoundError as exc:
            raise BadImageError("missing_file", str(exc)) from exc
        return self.put(data, uri)


# --- sources -------------------------------------------------------------------------------------


class Source:
    """A local folder, ``s3://`` prefix or CSV of paths, with its root (``root``, default :func:`root_of`),
    the root rule (``allow_outside_root``) and the download cache (default :meth:`DownloadCache.of`)."""

    def __init__(
        self,
        uri: str | os.PathLike,
        storage: Storage | None = None,
        allow_outside_root: bool = False,
        root: str | None = None,
        cache: DownloadCache | None = None,
    ) -> None:
        self.storage = storage or Storage()
        self.uri = str(uri) if is_s3(uri) else os.path.abspath(uri)
        self.allow_outside_root = allow_outside_root
        self.root = root if root is not None else root_of(self.uri, self.storage)
        self.cache = cache or DownloadCache.of(self.storage)

    @property
    def is_csv(self) -> bool:
        return self.uri.lower().endswith(".csv")

    # the root rule ----------------------------------------------------------------------------

    def entry(self, path: str, rel: str | None = None) -> Entry:
        """The entry of ``path`` (an absolute path or URI), refused ``outside_root`` when the root rule says so."""
        rel = relative(path, self.root) if rel is None else rel
        if not self.allow_outside_root and outside_root(path, self.root):
            message = f"{path} is outside the dataset root {self.root}; not read (allow_outside_root=True reads it)"
            return Entry(path, rel, "outside_root", message)
        return Entry(path, rel)

    def csv_entry(self, raw: str) -> Entry:
        """The entry of a CSV's path cell (relative to the CSV's folder)."""
        return self.entry(resolve(raw.strip(), base_of(self.uri)))

    # listing ------------------------------------------------------------------------------------

    def table(self) -> pd.DataFrame:
        """The CSV itself (strings)."""
        return read_table(self.storage.get_bytes(self.uri), self.uri)

    def list_folder(self) -> Listing:
        """Every non-hidden file and folder under the folder or prefix: local through :func:`walk_local`,
        S3 by listing (keys ending in ``/`` are the folder markers consoles create for empty folders)."""
        root = self.uri.rstrip("/")
        if not is_s3(root):
            return walk_local(root, self.allow_outside_root, self.entry)
        rels = [relative(p, root) for p in self.storage.list(root + "/")]
        hidden = {r for r in rels if any(part.startswith(".") for part in r.rstrip("/").split("/"))}
        for r in sorted(h for h in hidden if _is_image_name(posixpath.basename(h))):
            _say_hidden(root, r)
        rels = [r for r in rels if r not in hidden]
        folders = {r.rstrip("/") for r in rels if r.endswith("/")}
        files = [r for r in rels if not r.endswith("/")]
        folders |= {"/".join(f.split("/")[:i]) for f in files for i in range(1, f.count("/") + 1)}
        return Listing(root, [self.entry(join(root, r), r) for r in files], sorted(folders - {""}), [])

    # reading ------------------------------------------------------------------------------------

    def fetch(self, entry: Entry) -> Path:
        """The local file of an entry the root rule let through (S3 objects materialised in the cache).
        Raises :class:`BadImageError` for a refused entry or one that cannot be read as a file
        (``missing_file``, ``broken_symlink``, ``not_a_file``), found without reading it."""
        if entry.reason:
            raise BadImageError(entry.reason, entry.message)
        if is_s3(entry.path):
            return self.cache.fetch(entry.path, self.storage)
        problem = path_problem(entry.path)
        if problem is not None:
            raise BadImageError(*problem)
        return Path(entry.path)

    def read(self, entry: Entry, check: bool = True, on_image: OnImage | None = None) -> FileResult:
        """Fetch ``entry`` and, with ``check``, decode it once (:func:`ml.data.images.inspect_image`); hash it.
        With ``on_image`` the decode also converts to RGB and ``on_image(path, rgb)`` gets the pixels."""
        try:
            local = self.fetch(entry)
        except BadImageError as exc:
            return FileResult(entry, reason=exc.reason, message=exc.message)
        if check:
            found, rgb = inspect_image(local, convert=on_image is not None)
            if not found.ok:
                return FileResult(entry, reason=found.reason, message=found.message)
            if on_image is not None:
                on_image(entry.path, rgb)
        return FileResult(entry, str(local), sha256_file(local), local.stat().st_size)

    def read_all(
        self,
        entries: Iterable[Entry],
        check: bool = True,
        workers: int = 8,
        on_image: OnImage | None = None,
        progress: bool = False,
        desc: str = "read",
    ) -> list[FileResult]:
        """:meth:`read` of every entry in a thread pool of ``workers``, in order."""
        entries = list(entries)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            jobs = pool.map(lambda e: self.read(e, check, on_image), entries)
            return list(tqdm(jobs, total=len(entries), desc=desc, disable=not progress))


def walk_local(root: str, allow_outside_root: bool, entry: Callable[[str, str], Entry]) -> Listing:
    """Walk ``root`` following folder links, except links leading out of it (unless allowed) and links
    back into a folder on their own path (``symlink_loop``): those are not entered and come back as
    refused entries. ``entry(path, rel)`` makes each file's entry (the root rule for file links)."""
    root_real = os.path.realpath(root)
    files, folders, refused = [], [], []
    chains = {root: (root_real,)}  # real paths of each folder's ancestors, to detect loops
    for here, dirnames, filenames in os.walk(root, followlinks=True):
        chain, rel_here = chains.pop(here), os.path.relpath(here, root)
        entered = []
        for name in sorted(d for d in dirnames if d.startswith(".")):
            _say_hidden(root, os.path.normpath(os.path.join(rel_here, name)), _count_images(os.path.join(here, name)))
        for f in sorted(f for f in filenames if f.startswith(".") and _is_image_name(f)):
            _say_hidden(root, os.path.normpath(os.path.join(rel_here, f)))
        for name in sorted(d for d in dirnames if not d.startswith(".")):
            rel, real = os.path.normpath(os.path.join(rel_here, name)), os.path.realpath(os.path.join(here, name))
            path = os.path.join(root, rel)
            if real in chain:
                message = f"{name} links back to {real}, a folder above it; not entered"
                refused.append(Entry(path, rel, "symlink_loop", message))
            elif not allow_outside_root and not is_within(real, root_real):
                message = (
                    f"{name} links to {real}, outside the dataset root {root_real}; "
                    "not entered (allow_outside_root=True reads it)"
                )
                refused.append(Entry(path, rel, "outside_root", message))
            else:
                chains[os.path.join(here, name)] = (*chain, real)
                entered.append(name)
                folders.append(rel)
        dirnames[:] = entered
        for f in sorted(f for f in filenames if not f.startswith(".")):
            rel = os.path.normpath(os.path.join(rel_here, f))
            files.append(entry(os.path.join(root, rel), rel))
    return Listing(root, sorted(files, key=lambda e: e.rel), sorted(folders), refused)


def _is_image_name(name: str) -> bool:
    """An image by its name (not an AppleDouble ``._x.jpg`` resource fork, which is not one)."""
    return name.lower().endswith((*IMAGE_SUFFIXES, *_PHONE_SUFFIXES)) and not name.startswith("._")


def _count_images(folder: str) -> int:
    """Image files (by name) anywhere under ``folder``."""
    return sum(_is_image_name(f) for _, _, files in os.walk(folder) for f in files)


def _say_hidden(root: str, rel: str, images: int | None = None) -> None:
    """A warning line for a hidden file that is an image (``images`` None) or a hidden folder that
    holds ``images`` of them: hidden entries (``.DS_Store``, ``.thumbnails``, ``.git``) are never
    read, so what they hold is said, not silently skipped."""
    if images == 0:
        return  # a hidden folder without images: nothing a user lost
    if images is None:
        logger.warning("%s: hidden file %s is not read (hidden); rename it to use it", root, rel)
    else:
        logger.warning(
            "%s: hidden folder %s holds %d image file(s), not read (hidden); rename it to use them", root, rel, images
        )
