"""From options to a flow run: config objects built (a bad value refused in one line) before any
heavy import, then the flow run in this process with the local Prefect settings.

Prefect is imported, and its local database prepared, only by :func:`run_flow`: a verb's
``--help``, a mistyped option or a refused value never get that far."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from flows.cli.errors import fail
from ml.data.config import DataConfig
from ml.train.config import TrainConfig

Config = TypeVar("Config")


def build(cls: type[Config], **given) -> Config:
    """``cls`` from the options that were given, over the project file's section for ``cls``
    (ml/project.py; an option left out (None) takes the file's value, else the class default);
    a bad value or a broken project file is one clear line and exit 2. A local data source is listed before any flow starts."""
    from pydantic import ValidationError

    from ml.project import ProjectError, load_project

    try:
        project = load_project()
    except ProjectError as exc:
        fail(str(exc))
    try:
        cfg = cls(**{**project.section_for(cls), **{k: v for k, v in given.items() if v is not None}})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or cls.__name__}: {e['msg']}" for e in exc.errors())
        fail(f"invalid {cls.__name__}: {problems}")
    if cls is DataConfig and "://" not in cfg.source:
        from ml.data.manifest import check_source

        try:
            check_source(cfg.source, allow_outside_root=cfg.allow_outside_root)
        except (ValueError, OSError) as exc:
            fail(str(exc))
    return cfg


def check_policies(**paths: Path | str | None) -> None:
    """Each named policy file (``validation=path``; None: the one in the policies folder) read and
    checked key by key before any work: a broken or mistyped policy is one line and exit 2 now,
    not a KeyError after the flow ran."""
    from ml.policies import PolicyError, load_policy

    for name, path in paths.items():
        try:
            load_policy(name, path)
        except PolicyError as exc:
            fail(str(exc))


def data_and_training(source, class_map, size, test_frac, seed, **training) -> dict[str, Any]:
    """The ``data`` and ``training`` parameters of the analysis verbs (robustness, interpret)."""
    return {
        "data": build(DataConfig, source=source, class_map=class_map, size=size, test_frac=test_frac, seed=seed),
        "training": build(TrainConfig, seed=seed, **training),
    }


def run_flow(flow: Callable[..., Any], *args, **parameters) -> Any:
    """Run ``flow`` (a Prefect flow, or a procedure that runs flows) in this process under
    :func:`flows.runtime.local_flow_settings` (ephemeral API without heartbeats; the first run
    on a machine says why it is slow)."""
    from flows.runtime import local_flow_settings

    with local_flow_settings():
        return flow(*args, **parameters)
