"""What a cached result about a dataset depends on, as one key: the bytes we would read (by path,
size and modification time), the options that change the result, and the code that computes it.

A cache answers only for the data it was computed on: a file added, removed, rewritten or
touched changes the key, for a folder and for a CSV of paths alike (the CSV's own bytes and every
file it lists). Listing and ``stat`` cost about a microsecond per file, so the key stays cheap for
100,000 rows, where hashing the contents would not. S3 sources have no key (None): they are
listed and hashed anew every time.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ml.storage import is_s3

# the modules whose code decides what a manifest holds (its reasons, labels and version)
MANIFEST_CODE = ("ml.data.manifest", "ml.data.images", "ml.data.fingerprint")


def code_version(modules: Iterable[str]) -> str:
    """sha256 of the source of ``modules``: a cached result of older code is never reused."""
    h = hashlib.sha256()
    for name in modules:
        h.update(name.encode())
        h.update(inspect.getsource(importlib.import_module(name)).encode())
    return h.hexdigest()


def _stat_line(path: Path, shown: str) -> str:
    try:
        st = path.stat()
    except OSError as exc:  # missing, broken link, no permission: part of what the key says
        return f"{shown}|{type(exc).__name__}"
    return f"{shown}|{st.st_size}|{st.st_mtime_ns}"


def _folder_lines(root: Path) -> Iterable[str]:
    """Every entry under ``root`` (hidden ones too: a file the manifest reports as ignored is part
    of its report), by relative path, size and mtime of what it points to; folder links are
    followed as the manifest follows them, each real folder once (a link loop ends there)."""
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted([*filenames, *(d for d in dirnames if (base / d).is_symlink())]):
            p = base / name
            rel = p.relative_to(root).as_posix()
            yield _stat_line(p, rel) + (f"|->{os.readlink(p)}" if p.is_symlink() else "")


def _csv_lines(csv_path: Path) -> Iterable[str]:
    """The CSV's own bytes and every local path it lists (relative to its folder)."""
    import pandas as pd

    data = csv_path.read_bytes()
    yield "csv|" + hashlib.sha256(data).hexdigest()
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False, usecols=lambda c: c == "path")
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return  # the manifest reports the broken CSV; its bytes are the key
    base = csv_path.parent
    for raw in dict.fromkeys(table.get("path", [])):  # each distinct path once
        raw = str(raw).strip()
        if not raw or is_s3(raw) or "://" in raw:
            yield f"uri|{raw}"
            continue
        p = Path(raw) if os.path.isabs(raw) else base / raw
        yield _stat_line(p, raw)


def source_fingerprint(
    source: str, options: Mapping[str, Any] | None = None, code: Iterable[str] = MANIFEST_CODE
) -> str | None:
    """The key of a result computed from ``source`` (a local folder or CSV) with ``options``;
    None for an S3 source or a path that does not exist (nothing to reuse)."""
    if is_s3(str(source)) or not os.path.exists(source):
        return None
    root = Path(source)
    h = hashlib.sha256(code_version(code).encode())
    h.update(repr(sorted((options or {}).items())).encode())
    for key in ("class_map",):
        value = (options or {}).get(key)
        if value and os.path.isfile(str(value)):  # a class-map file: its bytes, not only its name
            h.update(Path(value).read_bytes())
    lines = _csv_lines(root) if root.is_file() else _folder_lines(root)
    for line in lines:
        h.update(line.encode())
        h.update(b"\n")
    return h.hexdigest()
