"""Run names a person compares at a glance in the MLflow runs table."""

from __future__ import annotations

import itertools

import pytest

from ml.tracking.runs import run_name
from ml.train.config import TrainConfig


def test_fields_in_order() -> None:
    cfg = TrainConfig(schedule="sgdr_dlr_clm", lr=0.012345, amp=False, seed=0)
    assert run_name("train", cfg) == "sgdr_dlr_clm lr=0.0123 fp32 s0 [train]"


def test_lr_to_three_significant_digits_and_none_as_auto() -> None:
    assert "lr=0.000457" in run_name("train", TrainConfig(lr=0.00045678))
    assert "lr=1.5" in run_name("train", TrainConfig(lr=1.5))
    assert "lr=auto" in run_name("train", TrainConfig(lr=None)).split()


def test_precision() -> None:
    assert run_name("train", TrainConfig(amp=True)).split()[2] == "amp"
    assert "bf16" in run_name("train", TrainConfig(amp=True), precision="bf16").split()
    assert "fp32" in run_name("train", TrainConfig(amp=False)).split()


def test_parts_override_the_config_and_extras_follow() -> None:
    cfg = TrainConfig(schedule="sgd", lr=0.1, seed=3)
    name = run_name("tune", cfg, schedule="adam", lr=None, data="0123456789abcdef", trial=7)
    assert name == "adam lr=0.1 fp32 s3 data=01234567 #7 [tune]", "None parts are left out, digests cut"
    assert run_name("validate", data="0123456789abcdef") == "data=01234567 [validate]"


def test_arch_only_when_not_the_default() -> None:
    assert "resnet18" not in run_name("train", TrainConfig())
    assert run_name("train", TrainConfig(arch="densenet121")).split()[-2] == "densenet121"
    assert run_name("train", arch="resnet18") == "resnet18 [train]", "asked for explicitly"


def test_arch_after_what_a_sweep_varies_and_shortened() -> None:
    """Trials of one backbone differ in schedule, LR and precision: those come first, the
    (shortened) architecture just before the flow."""
    cfg = TrainConfig(arch="efficientnet_lite0", schedule="sgdr", lr=0.0045678, seed=0)
    assert run_name("trial", cfg, precision="bf16", trial=3) == "sgdr lr=0.00457 bf16 s0 #3 lite0 [trial]"
    train = TrainConfig(schedule="sgdr_dlr_clm", lr=0.0123, amp=False)
    assert run_name("train", train, arch="resnet18") == "sgdr_dlr_clm lr=0.0123 fp32 s0 resnet18 [train]"
    assert run_name("train", arch="resnext101_32x8d") == "resnext101 [train]"
    a = run_name("trial", cfg.model_copy(update={"lr": 0.00123}), precision="bf16", trial=1)
    b = run_name("trial", cfg.model_copy(update={"schedule": "adam"}), precision="bf16", trial=2)
    assert len({a[:22], b[:22], run_name("trial", cfg, precision="bf16", trial=3)[:22]}) == 3


@pytest.mark.parametrize(
    "arch,short",
    [
        ("efficientnet_lite0", "lite0"),
        ("efficientnet_lite2", "lite2"),
        ("resnext50_32x4d", "resnext50"),
        ("resnet18", "resnet18"),
        ("densenet121", "densenet121"),
        ("some_new_arch", "some_new_arch"),
    ],
)
def test_short_arch(arch: str, short: str) -> None:
    from ml.tracking.runs import short_arch

    assert short_arch(arch) == short


def test_short_arch_names_stay_distinct() -> None:
    from ml.tracking.runs import short_arch
    from ml.train.config import ARCHS

    assert len({short_arch(a) for a in ARCHS}) == len(ARCHS)


def test_what_differs_comes_first() -> None:
    """The runs table shows about the first 22 characters of a name."""
    a = run_name("train", TrainConfig(schedule="sgdr_dlr_clm", lr=0.0123))
    b = run_name("train", TrainConfig(schedule="sgdr_dlr_clm", lr=0.0345))
    assert a[:22] != b[:22]


def test_distinct_configs_give_distinct_short_names() -> None:
    grid = itertools.product(
        ["sgd", "adam", "sgdr", "sgdr_dlr", "sgdr_dlr_clm"],
        [None, 1e-3, 1.23e-3, 0.05],
        [False, True],
        [0, 1],
        ["resnet18", "resnext101_32x8d"],
    )
    names = [
        run_name("trial", TrainConfig(schedule=s, lr=lr, amp=a, seed=seed, arch=arch), trial=12)
        for s, lr, a, seed, arch in grid
    ]
    assert len(set(names)) == len(names)
    assert max(map(len, names)) <= 60, max(names, key=len)


def test_a_mapping_works_like_a_config() -> None:
    cfg = TrainConfig(schedule="sgdr", lr=0.02, amp=True, seed=1)
    assert run_name("trial", cfg.to_dict()) == run_name("trial", cfg)


@pytest.mark.parametrize(
    "trial,index", [("run_trial_ccd60_00003", "3"), ("run_trial_ab12c_00000", "0"), ("custom", "custom")]
)
def test_trial_index(trial: str, index: str) -> None:
    from ml.train.sweep_trial import trial_index

    assert trial_index(trial) == index


def test_names_carry_the_precision_actually_used() -> None:
    import torch

    from ml.train.precision import choose_precision

    cpu = torch.device("cpu")
    native = choose_precision(cpu, True, cpu_flags={"avx512_bf16"}, capability="AVX512")
    avx2 = choose_precision(cpu, True, cpu_flags={"avx2"}, capability="AVX2")
    cfg = TrainConfig(schedule="sgdr", lr=0.01, amp=True)
    assert "bf16" in run_name("train", cfg, precision=native.name)
    assert "fp32" in run_name("train", cfg, precision=avx2.name), "amp asked, fp32 used: the name says fp32"


# --- Prefect flow run names and tags (flows/naming.py) ------------------------------------------


def test_flow_run_name_from_parameters() -> None:
    from flows.naming import flow_run_name
    from ml.data.config import DataConfig

    params = {
        "data": DataConfig(source="data/isic9"),
        "training": TrainConfig(arch="efficientnet_lite0", schedule="sgdr_dlr_clm"),
        "tune": False,
    }
    assert flow_run_name("retrain", params) == "retrain-isic9-efficientnet_lite0-sgdr_dlr_clm"
    # a deployment's parameters are mappings; what they leave out takes the class defaults
    assert flow_run_name("train", {"data": {"source": "s3://bucket/sd198/"}}) == "train-sd198-resnet18-sgdr_dlr_clm"
    assert flow_run_name("retrain", {"data": {"source": "isic9.csv"}, "tune": True}) == (
        "retrain-isic9-tuned-resnet18-5schedules"
    )
    assert flow_run_name("monitor", {"monitor": {"batch": "data/incoming/daily"}}) == "monitor-daily-champion"
    assert flow_run_name("validate", {}) == "validate-synth"


def test_every_flow_names_its_runs_and_the_callable_reads_the_run_parameters(monkeypatch) -> None:
    import prefect.runtime.flow_run as runtime_flow_run

    from flows.naming import run_namer
    from tests.unit.test_configs import _flows

    for name, fl in _flows().items():
        assert callable(fl.flow_run_name), f"{name} has no flow_run_name"
        assert fl.flow_run_name().startswith(f"{name}-"), name
    monkeypatch.setitem(runtime_flow_run.FIELDS, "parameters", lambda: {"data": {"source": "data/isic9"}})
    assert run_namer("tune")() == "tune-isic9-resnet18-5schedules"


def test_deployments_carry_the_flow_tags_and_mlflow_runs_the_flow_run_id() -> None:
    from pathlib import Path

    import yaml

    from flows.naming import flow_tags, mlflow_tags

    spec = yaml.safe_load((Path(__file__).resolve().parents[2] / "prefect.yaml").read_text())
    for dep in spec["deployments"]:
        flow = dep["entrypoint"].split(":")[1].removesuffix("_flow").replace("_", "-")
        assert dep.get("tags") == list(flow_tags(flow)), dep["entrypoint"]
    assert mlflow_tags(dataset_version="abc") == {"dataset_version": "abc"}, "outside a flow run: no id"
