"""Typed configuration: validated bounds, one place per default, and prefect.yaml's parameters
accepted by the flows they deploy."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, ValidationError
from typer.testing import CliRunner

from ml.data.config import DataConfig
from ml.gan.config import AugCheckConfig, ProGANConfig
from ml.interpret.config import InterpretConfig
from ml.quality.config import LabelIssuesConfig
from ml.robust.config import RobustnessConfig
from ml.train.config import VARIANTS, LRFindConfig, SweepConfig, TrainConfig

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "cls,bad",
    [
        (TrainConfig, {"schedule": "cosine"}),
        (TrainConfig, {"epochs": 0}),
        (TrainConfig, {"lr": -1.0}),
        (TrainConfig, {"arch": "vgg16"}),
        (TrainConfig, {"monitor": "val_f1"}),
        (TrainConfig, {"unknown": 1}),
        (DataConfig, {"val_frac": 0.6, "test_frac": 0.5}),
        (DataConfig, {"size": 4}),
        (DataConfig, {"test_frac": 1.0}),
        (SweepConfig, {"schedules": ["sgd", "sgd"]}),
        (SweepConfig, {"schedules": []}),
        (SweepConfig, {"num_samples": 0}),
        (LRFindConfig, {"start_lr": 1.0, "end_lr": 0.1}),
        (LRFindConfig, {"num_iter": 1}),
        (RobustnessConfig, {"noise_levels": [0.05, 0.05]}),
        (RobustnessConfig, {"blur_kernel": 6}),
        (InterpretConfig, {"seeds": 0}),
        (InterpretConfig, {"confidence": 1.0}),
        (ProGANConfig, {"resolution": 48}),
        (ProGANConfig, {"fade_iters": 0}),
        (AugCheckConfig, {"ratio": 1.0}),
        (AugCheckConfig, {"label_a": "acne", "label_b": "acne"}),
    ],
)
def test_bad_values_are_refused_with_the_field_named(cls, bad):
    with pytest.raises(ValidationError) as err:
        cls(**bad)
    assert str(next(iter(bad))) in str(err.value) or "must" in str(err.value)


def test_assignment_is_validated_too():
    cfg = TrainConfig()
    with pytest.raises(ValidationError):
        cfg.schedule = "cosine"
    assert SweepConfig().schedules == list(VARIANTS)


def _flows():
    from flows.augcheck import augcheck_flow
    from flows.curation_ab import curation_ab_flow
    from flows.interpret import interpret_flow
    from flows.label_issues import label_issues_flow
    from flows.monitor import monitor_flow
    from flows.predict import predict_flow
    from flows.retrain import retrain_flow
    from flows.robustness import robustness_flow
    from flows.train import lr_find_flow, pretrain_flow, train_flow
    from flows.tune import tune_flow
    from flows.validate import validate_flow

    return {
        f.name: f
        for f in (
            train_flow,
            lr_find_flow,
            pretrain_flow,
            tune_flow,
            retrain_flow,
            validate_flow,
            curation_ab_flow,
            robustness_flow,
            interpret_flow,
            monitor_flow,
            predict_flow,
            augcheck_flow,
            label_issues_flow,
        )
    }


def test_flows_take_config_objects_whose_defaults_are_the_classes():
    """No flow restates a default: a config parameter defaults to its class's own default."""
    seen = set()
    for name, fl in _flows().items():
        for param in inspect.signature(fl.fn).parameters.values():
            cls = param.annotation if isinstance(param.annotation, type) else None
            if isinstance(param.annotation, str):  # postponed annotations
                cls = {
                    "DataConfig": DataConfig,
                    "TrainConfig": TrainConfig,
                    "SweepConfig": SweepConfig,
                    "LRFindConfig": LRFindConfig,
                    "RobustnessConfig": RobustnessConfig,
                    "InterpretConfig": InterpretConfig,
                    "AugCheckConfig": AugCheckConfig,
                    "ProGANConfig": ProGANConfig,
                    "LabelIssuesConfig": LabelIssuesConfig,
                }.get(param.annotation)
            if cls is not None and issubclass(cls, BaseModel):
                assert param.default == cls(), f"{name}.{param.name} overrides {cls.__name__}'s defaults"
                seen.add(cls)
    assert seen == {
        DataConfig,
        TrainConfig,
        SweepConfig,
        LRFindConfig,
        RobustnessConfig,
        InterpretConfig,
        AugCheckConfig,
        ProGANConfig,
        LabelIssuesConfig,
    }


def test_prefect_yaml_parameters_validate_against_their_flows():
    flows = _flows()
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    checked = 0
    for dep in spec["deployments"]:
        flow_name = dep["entrypoint"].split(":")[1]
        fl = next(f for f in flows.values() if f.fn.__name__ == flow_name)
        validated = fl.validate_parameters(dict(dep.get("parameters", {})))
        for key, value in dep.get("parameters", {}).items():
            if isinstance(value, dict):  # a nested mapping became the config object, the rest defaults
                obj = validated[key]
                assert isinstance(obj, BaseModel)
                assert {k: getattr(obj, k) for k in value} == value
        checked += 1
    assert checked == len(spec["deployments"]) >= 5
    with pytest.raises(Exception, match="schedule"):
        flows["train"].validate_parameters({"training": {"schedule": "cosine"}})


def test_cli_shows_the_class_defaults_and_refuses_bad_values_in_one_line(tmp_path):
    from flows.cli import app

    runner = CliRunner()
    out = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert out.exit_code == 0
    assert f"(default: {DataConfig().size})" in out.output and f"(default: {TrainConfig().epochs})" in out.output
    (tmp_path / "acne").mkdir()
    (tmp_path / "acne" / "a.jpg").write_bytes(b"listed, never decoded")
    bad = runner.invoke(app, ["train", "--data", str(tmp_path), "--schedule", "cosine"])
    assert bad.exit_code == 2
    assert "schedule" in bad.output and "Traceback" not in bad.output
    bad = runner.invoke(app, ["tune", "--data", str(tmp_path), "--amp", "maybe"])
    assert bad.exit_code == 2 and "--amp" in bad.output
