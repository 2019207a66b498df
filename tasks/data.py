"""Prefect tasks over the data layer (ml.data.manifest, ml.data.split, ml.data.cache). No ML logic here."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from ml.settings import get_settings
from ml.storage import is_s3
from tasks.common import IO_RETRY, publish_table


def _source_fingerprint(ctx, params: dict) -> str | None:
    """Cache key for a manifest: the file listing (relative path, size, mtime) of a local source.
    The manifest's own content digest is the dataset version; this key only saves re-hashing
    unchanged trees. S3 sources are re-listed each time (no key)."""
    src = str(params["source"])
    if is_s3(src) or not os.path.exists(src):
        return None
    h = hashlib.sha256(
        f"{src}|{params.get('class_map')}|{params.get('check', True)}|"
        f"{params.get('allow_outside_root', False)}".encode()
    )
    root = Path(src)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(root) if p != root else p.name}|{st.st_size}|{st.st_mtime_ns}".encode())
    return "manifest-" + h.hexdigest()[:32]


@task(name="build-manifest", **IO_RETRY, cache_key_fn=_source_fingerprint, persist_result=True)
def build_manifest(source: str, class_map: str | None = None, check: bool = True, allow_outside_root: bool = False):
    """Manifest with file digests, labels, bad files (with reasons) and the dataset version."""
    from ml.data.manifest import build_manifest as _build
    from ml.data.manifest import load_class_map

    m = _build(
        source,
        class_map=load_class_map(class_map) if class_map else None,
        check=check,
        progress=True,
        allow_outside_root=allow_outside_root,
    )
    publish_table("manifest", m.summary(), f"Manifest of {source}")
    return m


@task(name="split-dataset", cache_policy=NO_CACHE)
def split_dataset(manifest, val_frac: float = 1 / 6, test_frac: float = 0.0, seed: int = 0):
    """Stratified, duplicate-aware split (raises before any training when a class is too small)."""
    from ml.data.split import split_manifest

    return split_manifest(manifest, val_frac=val_frac, test_frac=test_frac, seed=seed)


@task(name="build-image-cache", cache_policy=NO_CACHE)
def build_image_cache(manifest, size: int):
    """Decoded uint8 images at training size; reused on disk when version and size match."""
    from ml.data.cache import build_cache

    return build_cache(manifest, size, get_settings().data_root / "cache", progress=True)
