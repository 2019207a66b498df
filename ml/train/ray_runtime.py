"""Ray for the sweep: a local one-node Ray bound to 127.0.0.1 (:func:`start_local_ray`) unless a
cluster address is set (:func:`ray_init`), and where Tune keeps an experiment's state
(:func:`storage_for`). Ray is imported only when one of these runs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ml.settings import Settings
from ml.storage import is_s3, split_s3

REPO = Path(__file__).resolve().parents[2]  # the checkout Ray's workers import (PYTHONPATH)

_CLUSTERS_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextmanager
def _loopback_only() -> Iterator[None]:
    """Ray's single-machine mode while a local Ray starts. On Linux Ray turns a node address of
    127.0.0.1 into the machine's network address (clusters being enabled) and its servers then
    listen on every interface; with multi-node support off (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``,
    read by ``ray._private.ray_constants`` at import and by the processes the node starts) the
    node keeps 127.0.0.1 and every server binds it.

    Why a patch of Ray's private module and not a setting (checked against Ray 2.60): ``ray.init``
    passes ``_node_ip_address`` (itself private) through ``services.resolve_ip_for_localhost``
    (python/ray/_private/worker.py, ``init``), which replaces any loopback address with
    ``services.get_node_ip_address()``; that returns the loopback address only when
    ``ray_constants.ENABLE_RAY_CLUSTER`` is False (python/ray/_private/services.py). The constant is
    read from ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` once, when ``ray._private.ray_constants`` is
    first imported (python/ray/_private/ray_constants.py), so the environment variable alone
    only works in a process that sets it before importing Ray, and this process may already have
    (the test session, a flow). No public ``ray.init`` argument keeps a Linux node on 127.0.0.1:
    upstream treats the replacement as intended (ray-project/ray#26293, "Not respecting
    --node-ip-address" with 127.0.0.1 on Linux) and the switch is the opt-in of
    ray-project/ray#30770 (PR #31166) for macOS/Windows clusters. The variable is still set, for
    the processes the node starts; the module constant is patched for this one, and both are
    restored after."""
    from ray._private import ray_constants

    old_env, old_flag = os.environ.get(_CLUSTERS_SWITCH), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_CLUSTERS_SWITCH], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = old_flag
        if old_env is None:
            os.environ.pop(_CLUSTERS_SWITCH, None)
        else:
            os.environ[_CLUSTERS_SWITCH] = old_env


def start_local_ray(num_cpus: int | None = None, env_vars: dict[str, str] | None = None) -> None:
    """A local one-node Ray for this process, reachable on 127.0.0.1 only (see
    :func:`_loopback_only`); its workers import this checkout (``PYTHONPATH``)."""
    import ray

    with _loopback_only():
        ray.init(
            num_cpus=num_cpus or os.cpu_count(),
            include_dashboard=False,
            ignore_reinit_error=True,
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONPATH": str(REPO), **(env_vars or {})}},
        )


def ray_init(settings: Settings, cpus: int | None = None) -> None:
    """Connect to ``settings.ray_address`` when set, else start a local Ray
    (:func:`start_local_ray`); nothing when Ray is already initialised in this process."""
    import ray

    if ray.is_initialized():
        return
    if settings.ray_address:
        ray.init(address=settings.ray_address, ignore_reinit_error=True)
    else:
        start_local_ray(cpus)


def storage_for(settings: Settings, experiment: str) -> tuple[str, Any]:
    """Tune's storage path (+ pyarrow filesystem for S3 with a custom endpoint)."""
    uri = settings.uri("tune", experiment)
    if not is_s3(uri):
        return str(Path(uri).resolve().parent), None
    import pyarrow.fs as pafs

    fs = pafs.S3FileSystem(
        endpoint_override=settings.s3_endpoint_url,
        region=settings.s3_region,
        scheme="http" if (settings.s3_endpoint_url or "").startswith("http:") else "https",
    )
    bucket, key = split_s3(uri)
    return f"{bucket}/{key.rsplit('/', 1)[0]}", fs
