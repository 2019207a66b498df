"""Decoded uint8 image cache at training size, keyed by manifest version and size.

Layout: ``<cache_root>/<version>/<size>/`` with ``images.npy`` (N, size, size, 3 uint8, opened as a
memory map), ``labels.npy`` (int64 indices into ``classes``), ``index.csv`` (path, label, split) and
``meta.json`` (version, size, n, classes, and the SHA-256 of each file). A cache is built in a
temporary folder and renamed into place, under a file lock (``flock`` on the ``<version>`` folder) so that
concurrent builds of the same cache (two retrains at once) decode it once; the others wait and
reuse it. A cache is used only when its files match the checksums of its ``meta.json``: a truncated
or altered cache is rebuilt by :func:`build_cache` and refused by :meth:`ImageCache.open`. A build
that runs out of space raises ``ml.storage.StorageFullError`` naming the folder.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps
from tqdm import tqdm

from ml.data.images import BadImageError, load_rgb
from ml.data.manifest import Manifest
from ml.storage import IntegrityError, atomic_write, sha256_file, verify_file, write_error

log = logging.getLogger(__name__)
_FILES = ("images.npy", "labels.npy", "index.csv")


@dataclass
class ImageCache:
    """Decoded images (memory-mapped), label indices and split names of one manifest at one size."""

    images: np.ndarray
    labels: np.ndarray
    splits: np.ndarray
    classes: list[str]
    version: str
    size: int
    path: Path | None = None

    @classmethod
    def open(cls, folder: str | Path) -> ImageCache:
        """Open a complete cache folder (``<cache_root>/<version>/<size>``), e.g. in a Ray trial."""
        folder = Path(folder)
        if not (folder / "meta.json").is_file():
            raise FileNotFoundError(f"{folder} is not a complete image cache (no meta.json)")
        _verify(folder)
        return _open(folder)

    def subset(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """``(images, labels)`` of one split (images are read into memory)."""
        mask = self.splits == split
        if not mask.any():
            raise ValueError(f"cache {self.version}/{self.size} has no '{split}' records "
                             f"(splits: {sorted(set(self.splits.tolist()))})")
        return np.asarray(self.images[mask]), self.labels[mask]

    def summary(self) -> pd.DataFrame:
        """Image counts per (split, label): a compact description of the cached dataset (what a
        run that only has the cache logs as its dataset input)."""
        records = pd.DataFrame({"split": self.splits, "label": np.asarray(self.classes)[self.labels]})
        return records.value_counts(["split", "label"], sort=False).rename("n").reset_index()


def resize_crop(img: Image.Image, size: int) -> Image.Image:
    """Resize the short side to ``size`` and centre-crop to ``size`` x ``size``."""
    return ImageOps.fit(img, (size, size), method=Image.Resampling.BICUBIC, centering=(0.5, 0.5))


def _label_indices(manifest: Manifest) -> np.ndarray:
    index = {c: i for i, c in enumerate(manifest.classes)}
    unknown = sorted(set(manifest.records["label"]) - set(index))
    if unknown:
        raise ValueError(f"manifest labels {unknown} are not in its classes {manifest.classes}")
    return manifest.records["label"].map(index).to_numpy(dtype=np.int64)


def _meta(manifest: Manifest, size: int) -> dict:
    return {"version": manifest.version, "size": size, "n": len(manifest.records), "classes": manifest.classes}


def _open(folder: Path) -> ImageCache:
    meta = json.loads((folder / "meta.json").read_text())
    index = pd.read_csv(folder / "index.csv", dtype=str, keep_default_na=False)
    return ImageCache(
        images=np.load(folder / "images.npy", mmap_mode="r"),
        labels=np.load(folder / "labels.npy"),
        splits=index["split"].to_numpy(dtype=str),
        classes=list(meta["classes"]),
        version=meta["version"],
        size=int(meta["size"]),
        path=folder.resolve(),
    )


def _is_complete(folder: Path, meta: dict) -> bool:
    """A cache of this manifest and size whose files match their recorded checksums."""
    meta_file = folder / "meta.json"
    if not meta_file.is_file():
        return False
    found = json.loads(meta_file.read_text())
    if {k: found.get(k) for k in meta} != meta:
        return False
    try:
        _verify(folder)
    except IntegrityError as exc:
        log.warning("rebuilding image cache %s: %s", folder, exc)
        return False
    return True


def _verify(folder: Path) -> None:
    """Raise IntegrityError naming the file when a cache file is missing, truncated or altered."""
    files = json.loads((folder / "meta.json").read_text()).get("files")
    if not files:
        raise IntegrityError(f"image cache {folder} records no checksums (written by an older skinflow)")
    for name in _FILES:
        verify_file(folder / name, files.get(name, ""))


def _decode_into(images: np.ndarray, i: int, row: pd.Series, size: int,
                 on_decode: Callable[[str], None] | None) -> None:
    try:
        img = load_rgb(row["local_path"])
    except BadImageError as exc:
        raise BadImageError(exc.reason, f"cannot cache {row['path']}: {exc.message}") from exc
    images[i] = np.asarray(resize_crop(img, size))
    if on_decode is not None:
        on_decode(row["path"])


def _allocated_npy(path: Path, shape: tuple[int, ...], dtype) -> np.ndarray:
    """A writable memory-mapped ``.npy`` whose blocks are reserved on disk first: a disk without
    room fails here with OSError (ENOSPC/EFBIG), where a sparse map would kill the process with
    SIGBUS on the first page it cannot back."""
    dtype = np.dtype(dtype)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                 "fortran_order": False, "shape": shape})
        f.flush()
        os.posix_fallocate(f.fileno(), f.tell(), max(1, int(np.prod(shape)) * dtype.itemsize))
    return np.lib.format.open_memmap(path, mode="r+")


def _write(folder: Path, manifest: Manifest, size: int, progress: bool, workers: int,
           on_decode: Callable[[str], None] | None) -> None:
    """Decode every record into ``folder`` (a fresh temporary folder)."""
    records = manifest.records.reset_index(drop=True)
    labels = _label_indices(manifest)
    images = _allocated_npy(folder / "images.npy", (len(records), size, size, 3), np.uint8)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        jobs = pool.map(lambda i: _decode_into(images, i, records.iloc[i], size, on_decode), range(len(records)))
        for _ in tqdm(jobs, total=len(records), desc=f"cache {size}px", disable=not progress):
            pass
    images.flush()
    del images
    np.save(folder / "labels.npy", labels)
    records[["path", "label", "split"]].to_csv(folder / "index.csv", index=False)
    files = {name: sha256_file(folder / name) for name in _FILES}
    atomic_write(folder / "meta.json", json.dumps({**_meta(manifest, size), "files": files}, indent=2).encode())


def build_cache(
    manifest: Manifest,
    size: int,
    cache_root: str | Path,
    progress: bool = False,
    workers: int = 2,
    on_decode: Callable[[str], None] | None = None,
) -> ImageCache:
    """Decode the manifest once at ``size`` px into ``cache_root/<version>/<size>/`` (or reuse it).

    ``on_decode(path)`` is called after each image is decoded (never when the cache is reused).
    A file that fails to decode raises :class:`BadImageError` naming it.
    """
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    if manifest.records.empty:
        raise ValueError(f"manifest {manifest.version} of {manifest.source} has no records to cache")
    folder = Path(cache_root) / manifest.version / str(size)
    if _is_complete(folder, _meta(manifest, size)):
        return _open(folder)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        lock = os.open(folder.parent, os.O_RDONLY)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; the others wait, then reuse it
            if not _is_complete(folder, _meta(manifest, size)):
                _build_into(folder, manifest, size, progress, workers, on_decode)
        finally:
            os.close(lock)  # releases the lock
    except OSError as exc:
        raise write_error(folder, exc) from exc
    return _open(folder)


def _build_into(folder: Path, manifest: Manifest, size: int, progress: bool, workers: int,
                on_decode: Callable[[str], None] | None) -> None:
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{size}.tmp-"))
    try:
        _write(tmp, manifest, size, progress, workers, on_decode)
        shutil.rmtree(folder, ignore_errors=True)  # an incomplete, stale or corrupt cache
        os.rename(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
