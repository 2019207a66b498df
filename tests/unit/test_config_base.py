"""One config base (ml/config.py), one mark of the runtime-only fields, and a sweep trial that
inherits every training field it does not set itself."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json

import pytest
from pydantic import ValidationError

from ml.config import ConfigModel, runtime
from ml.data.config import DataConfig
from ml.gan.config import AugCheckConfig, ProGANConfig
from ml.interpret.config import InterpretConfig
from ml.monitor.config import MonitorConfig
from ml.robust.config import RobustnessConfig
from ml.train.config import LRFindConfig, SweepConfig, TrainConfig

CONFIGS = [
    TrainConfig,
    SweepConfig,
    LRFindConfig,
    DataConfig,
    MonitorConfig,
    InterpretConfig,
    RobustnessConfig,
    ProGANConfig,
    AugCheckConfig,
]


def _make(cls):
    return cls(batch="data/incoming") if cls is MonitorConfig else cls()


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_config_class_has_the_one_base(cls):
    assert issubclass(cls, ConfigModel)
    assert cls.model_config["extra"] == "forbid" and cls.model_config["validate_assignment"] is True
    cfg = _make(cls)
    assert cfg.to_dict() == cfg.model_dump(mode="json")
    json.dumps(cfg.to_dict())
    with pytest.raises(ValidationError, match="unknown_field"):
        cls(**{**cfg.to_dict(), "unknown_field": 1})


def test_runtime_fields_are_marked_where_declared():
    assert TrainConfig.runtime_fields() == (
        "device",
        "num_workers",
        "checkpoint_dir",
        "checkpoint_interval_s",
        "progress",
    )
    assert ProGANConfig.runtime_fields() == ("device", "checkpoint_dir", "progress")
    assert LRFindConfig.runtime_fields() == ("reuse",)  # a stored result of the same test, or a new one
    for cls in (SweepConfig, DataConfig, MonitorConfig, InterpretConfig, RobustnessConfig):
        assert cls.runtime_fields() == ()


def test_identity_leaves_out_the_runtime_fields_only():
    cfg = TrainConfig(lr=0.01, device="cpu", num_workers=2, checkpoint_dir="/tmp/x", progress=False)
    ident = cfg.identity()
    assert set(ident) == set(TrainConfig.model_fields) - set(TrainConfig.runtime_fields())
    assert ident == {k: v for k, v in cfg.to_dict().items() if k in ident}
    moved = cfg.model_copy(update={"device": "cuda", "checkpoint_interval_s": 30.0, "progress": True})
    assert moved.identity() == ident
    assert cfg.model_copy(update={"seed": 1}).identity() != ident


def test_the_mark_keeps_bounds_and_descriptions():
    class Example(ConfigModel):
        workers: int = runtime(0, ge=0, description="how many")
        size: int = 3

    assert Example.runtime_fields() == ("workers",)
    assert Example.model_fields["workers"].description == "how many"
    assert Example.model_json_schema()["properties"]["workers"]["runtime"] is True
    with pytest.raises(ValidationError):
        Example(workers=-1)
    assert Example(workers=2).identity() == {"size": 3}


def test_resume_keys_and_config_hash_ignore_runtime_fields():
    from flows.retrain import config_hash
    from ml.gan.train import _resume_key as gan_key
    from ml.train.loop import _resume_key

    a = TrainConfig(lr=0.01)
    b = a.model_copy(update={"device": "cpu", "num_workers": 3, "checkpoint_dir": "/c", "progress": False})
    assert _resume_key(a) == _resume_key(b) and config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash(a.model_copy(update={"force_amp": True}))
    # the same digest as before the runtime fields were marked (registered versions keep their tag)
    old = {k: v for k, v in a.to_dict().items() if k not in a.runtime_fields()}
    assert config_hash(a) == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:12]
    g = ProGANConfig()
    assert gan_key(g, 32, 10) == gan_key(g.model_copy(update={"device": "cpu", "progress": False}), 32, 10)


def test_a_trial_inherits_every_training_field_it_does_not_set():
    """Each TrainConfig field is inherited by a sweep trial, set by the trial, or runtime-only;
    --force-amp reaches the trials."""
    from ml.train.sweep import TRIAL_SETS, trial_base

    fields = set(TrainConfig.model_fields)
    inherited, runtime_only = set(trial_base(TrainConfig())), set(TrainConfig.runtime_fields())
    assert inherited | TRIAL_SETS | runtime_only == fields
    assert not inherited & TRIAL_SETS
    assert TRIAL_SETS <= fields
    assert "force_amp" in inherited
    assert {"device", "snapshots"} <= inherited, "run_tune and the trial read these from the base"
    # what the trial sets, the sweep's code sets (the trials' `_base`, the trial body)
    source = "".join(inspect.getsource(importlib.import_module(m)) for m in ("ml.train.sweep", "ml.train.sweep_trial"))
    for name in TRIAL_SETS:
        assert f'"{name}"' in source or f"cfg.{name} =" in source, f"{name} is not set by the trial"
