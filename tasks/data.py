"""Prefect tasks over the data layer (ml.data.manifest, ml.data.split, ml.data.cache). No ML logic here."""

from __future__ import annotations

from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE, CachePolicy

from ml.settings import get_settings
from tasks.common import IO_RETRY, publish_table


@dataclass
class SourceFingerprint(CachePolicy):
    """Prefect cache policy of a manifest: :func:`ml.data.fingerprint.source_fingerprint` of the
    source (every file it reads by path, size and mtime; a CSV's listed files too), the task's
    options, and the version of the code that builds manifests. No key (no caching) for S3
    sources. One policy, not a compound: a compound drops a part that has no key and would cache
    an S3 listing under the other parts' key."""

    def compute_key(self, task_ctx, inputs: dict, flow_parameters: dict, **kwargs) -> str | None:
        from ml.data.fingerprint import source_fingerprint

        options = {k: v for k, v in inputs.items() if k != "source"}
        key = source_fingerprint(str(inputs["source"]), options)
        return None if key is None else f"manifest-{key[:32]}"


@task(name="build-manifest", **IO_RETRY, cache_policy=SourceFingerprint(), persist_result=True)
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


@task(name="load-manifest", cache_policy=NO_CACHE)
def load_manifest(path: str):
    """A manifest saved with its sidecar (e.g. a quarantined dataset version), checked against its version."""
    from ml.data.manifest import Manifest

    return Manifest.load(path)


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
