"""The project file: a team's data, recipe, registered model, incoming batches and policies,
written once (``skinflow init``) and read by every verb, the demo and every deployment.

It only overrides. Each default still lives in its config class; the file names values for the
sections below, and an option given on the command line or a deployment parameter overrides the
file's value (:func:`apply`). Precedence: explicit > project file > class default.

.. code-block:: yaml

    data: {source: /data/derm, size: 128}          # DataConfig
    training: {arch: efficientnet_lite0, weights: imagenet, epochs: 5}   # TrainConfig
    sweep: {archs: [efficientnet_lite0], schedules: [adam, sgdr_dlr_clm]}  # SweepConfig
    lr_find: {num_iter: 60}                        # LRFindConfig
    monitor: {batch: /data/incoming/latest}        # MonitorConfig
    registered_model: derm-classifier              # settings (ml/settings.py)
    policies_dir: policies                         # settings

The file is named by the setting ``project_file`` (``SKINFLOW_PROJECT_FILE``; default
``skinflow.yaml`` in the working directory). A missing default file is an empty project; a named
file that is missing, unknown keys (with the closest valid one), bad YAML and bad values are each
a one-line :class:`ProjectError` naming the file. Relative paths are read from the working
directory, as on the command line (deployments run in the checkout).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from ml.settings import PROJECT_ENV as ENV
from ml.settings import PROJECT_SETTING_KEYS as SETTING_KEYS
from ml.settings import ProjectError, project_path, read_project_yaml

Config = TypeVar("Config", bound=BaseModel)


def sections() -> dict[str, type[BaseModel]]:
    """Section name -> the config class it overrides (imported here: pydantic models only)."""
    from ml.data.config import DataConfig
    from ml.monitor.config import MonitorConfig
    from ml.quality.config import LabelIssuesConfig
    from ml.train.config import LRFindConfig, SweepConfig, TrainConfig

    return {
        "data": DataConfig,
        "training": TrainConfig,
        "sweep": SweepConfig,
        "lr_find": LRFindConfig,
        "monitor": MonitorConfig,
        "label_issues": LabelIssuesConfig,
    }


@dataclass(frozen=True)
class Project:
    """A read, checked project file (empty when there is none)."""

    path: Path | None = None
    values: dict[str, Any] = field(default_factory=dict)

    def section(self, name: str) -> dict[str, Any]:
        """The overrides of section ``name`` (``data``, ``training``, ...); {} when not given."""
        return dict(self.values.get(name) or {})

    def section_for(self, cls: type[BaseModel]) -> dict[str, Any]:
        """The overrides of the section whose class is ``cls``; {} for a class with no section."""
        names = [name for name, c in sections().items() if c is cls]
        return self.section(names[0]) if names else {}

    def settings(self) -> dict[str, Any]:
        """The settings the file names (``registered_model``, ``policies_dir``)."""
        return {k: self.values[k] for k in SETTING_KEYS if self.values.get(k) is not None}


def _closest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check(values: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """``values`` checked key by key: known sections and settings only, each section's keys fields
    of its class with valid values (a required field may be left to the command line)."""
    known = [*sections(), *SETTING_KEYS]
    for key in values:
        if key not in known:
            raise ProjectError(f"{path}: unknown project key {str(key)!r}{_closest(str(key), known)}")
    for name, cls in sections().items():
        section = values.get(name)
        if section is None:
            continue
        if not isinstance(section, dict):
            raise ProjectError(
                f"{path}: {name} must be a mapping of {cls.__name__} fields, got {type(section).__name__}"
            )
        fields = list(cls.model_fields)
        for key in section:
            if key not in fields:
                raise ProjectError(f"{path}: unknown {name} key {str(key)!r}{_closest(str(key), fields)}")
        try:
            cls.model_validate(section)
        except ValidationError as exc:
            wrong = [e for e in exc.errors() if e["type"] != "missing"]
            if wrong:
                where = ".".join(str(p) for p in wrong[0]["loc"])
                raise ProjectError(f"{path}: {name}.{where}: {wrong[0]['msg']}") from None
    for key in SETTING_KEYS:
        if key in values and not isinstance(values[key], str):
            raise ProjectError(f"{path}: {key} must be a string, got {type(values[key]).__name__}")
    return dict(values)


def load_project(path: str | Path | None = None) -> Project:
    """The project file at ``path`` (else :func:`project_path`), checked; an empty project when the
    default file does not exist."""
    file, named = (Path(path), True) if path else project_path()
    if not file.exists():
        if named:
            raise ProjectError(f"{file}: no such project file (named by {ENV})")
        return Project()
    return Project(file, check(read_project_yaml(file), file))


def apply(cls: type[Config], given: Config | Mapping[str, Any] | None, project: Project | None = None) -> Config:
    """``cls`` with the project's values under the explicitly given ones: for a config object,
    the fields it was built with (pydantic's ``model_fields_set``: a field left to its default
    takes the project's value), for a mapping its keys."""
    project = load_project() if project is None else project
    if isinstance(given, BaseModel):
        explicit = {k: getattr(given, k) for k in given.model_fields_set}
    else:
        explicit = dict(given or {})
    return cls(**{**project.section_for(cls), **explicit})


def with_project(*configs: BaseModel) -> tuple[Any, ...]:
    """Each config object with the project's values under its explicitly given fields
    (:func:`apply` with the config's own class; the file read once): the first step of every flow."""
    project = load_project()
    return tuple(apply(type(cfg), cfg, project) for cfg in configs)


# --------------------------------------------------------------------------- skinflow init
# What `skinflow init` proposes, each value with the reason the file states beside it. The demo
# (flows/demo.py) trains with DEMO_RECIPE, so init on the demo set writes what the demo runs.
PRETRAINED_RECIPE: dict[str, dict[str, tuple[Any, str]]] = {
    "data": {
        "size": (128, "3x fewer pixels than 224 px; the resolution of the isic9 figures in bench/RESULTS.md"),
    },
    "training": {
        "arch": ("efficientnet_lite0", "the thesis's small network: as accurate as larger ones on small sets, faster"),
        "weights": ("imagenet", "fine-tuning ImageNet weights beats random init by far on a few thousand photos"),
        "schedule": (
            "one_cycle",
            "fastai's warm-up + cosine with AdamW; on isic9 0.51 test balanced accuracy in 3 and 5 epochs "
            "(3 seeds; bench/RESULTS.md, rapid) where adam's step decay had reached 0.444",
        ),
        "epochs": (5, "on isic9 3 epochs scored as 5 and 10 0.02 more: the middle of a flat curve (bench-rapid)"),
        "batch_size": (32, "more, smaller steps in a short budget (fastai's default too)"),
        "amp": (True, "bf16 on CUDA and on CPUs with AMX; Lite0 without AMX trains faster in fp32 (channels_last)"),
    },
    "sweep": {
        "archs": (["efficientnet_lite0"], "the backbone above"),
        "schedules": (["one_cycle", "sgdr_dlr_clm"], "the recipe's schedule against the thesis's scheme (3 epochs)"),
        "amp": ([True], "as training"),
    },
    "lr_find": {
        "start_lr": (1e-5, "fine-tuning never needs less; on isic9 the range test chose 0.0017 here, 0.0012 from 1e-7"),
        "num_iter": (40, "~6 a decade: 11 s on isic9 where the default 100 from 1e-7 took 29 s (2-core EPYC)"),
    },
}
DEMO_RECIPE: dict[str, dict[str, tuple[Any, str]]] = {
    "data": {"size": (64, "the synthetic images' own size: pretrained features need no smaller")},
    "training": {
        "arch": (
            "efficientnet_lite0",
            "ImageNet-pretrained and packaged (no download): 0.96 test balanced accuracy on the demo set "
            "in 8 epochs where resnet18 from scratch reached 0.72 in 15 (2-core CPU, 2026-12-07)",
        ),
        "weights": ("imagenet", "fine-tuning beats random init on 600 images"),
        "schedule": ("one_cycle", "warm-up + cosine with AdamW: the real-data recipe's schedule"),
        "epochs": (7, "1+2+4: whole sgdr_dlr_clm cycles, should the sweep pick it; one_cycle fits any budget"),
        "batch_size": (32, "more steps per epoch on the small demo set"),
        "amp": (True, "bf16 where the machine has it"),
    },
    "sweep": {
        "archs": (["efficientnet_lite0"], "the backbone above"),
        "schedules": (["one_cycle", "sgdr_dlr_clm"], "the recipe's schedule against the thesis's scheme"),
        "epochs": (2, "a short trial per cell"),
        "num_samples": (1, "one LR per cell on 2 cores"),
        "amp": ([True], "bf16 where the machine has it"),
    },
    "lr_find": {"num_iter": (50, "half the default ramp: 600 small images need no more to find the bracket")},
}


def recipe_values(recipe: Mapping[str, Mapping[str, tuple[Any, str]]]) -> dict[str, dict[str, Any]]:
    """The section -> {field: value} mapping of a recipe (its reasons dropped)."""
    return {section: {k: v for k, (v, _) in fields.items()} for section, fields in recipe.items()}


def is_demo_set(source: str | Path) -> bool:
    """The synthetic demo set (ml/data/synth.py writes ``synth_meta.csv`` beside its class folders)."""
    return "://" not in str(source) and (Path(source) / "synth_meta.csv").is_file()


def propose(source: str, registered_model: str | None = None, batch: str | None = None) -> str:
    """The project file ``skinflow init`` writes for ``source``: the demo's recipe on the demo set,
    the pretrained recipe on anything else (a team's photographs), each value with its reason."""
    demo = is_demo_set(source)
    recipe = DEMO_RECIPE if demo else PRETRAINED_RECIPE
    kind = "the synthetic demo set" if demo else "a folder of photographs"
    lines = [
        "# skinflow project file (ml/project.py): every verb, the demo and every deployment read it.",
        f"# Written by `skinflow init` for {kind}. It only overrides: what it leaves out takes the",
        "# config class's default; an option on the command line or a deployment parameter overrides it.",
        "",
        "data:",
        f"  source: {_scalar(source)}",
    ]
    sections_ = {"data": dict(recipe["data"]), **{k: v for k, v in recipe.items() if k != "data"}}
    for section, fields in sections_.items():
        if section != "data":
            lines += ["", f"{section}:"]
        lines += [f"  {key}: {_scalar(value)}  # {why}" for key, (value, why) in fields.items()]
    lines += ["", "monitor:"]
    lines.append(
        f"  batch: {_scalar(batch)}  # the folder or s3:// prefix new images land in (skinflow drift, monitor/daily)"
        if batch
        else "  # batch: /path/to/incoming  # the folder or s3:// prefix new images land in (skinflow drift, monitor/daily)"
    )
    lines += [
        "",
        f"registered_model: {_scalar(registered_model or 'skin-lesion-classifier')}  # MLflow registry name",
        "# policies_dir: policies  # a folder with your copies of validation/promotion/drift/augcheck.yaml",
        "",
    ]
    text = "\n".join(lines)
    check(yaml.safe_load(text), Path("<proposal>"))  # what init writes is always a valid project file
    return text


def _scalar(value: Any) -> str:
    """``value`` in YAML flow style on one line."""
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("\n...").strip()
