"""The project file (ml/project.py): checked key by key, read under what was given by every
entry point (CLI options, flow parameters, run names, settings), and written by `skinflow init`
with the recipe that fits the data."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ml.data.config import DataConfig
from ml.monitor.config import MonitorConfig
from ml.project import (
    DEMO_RECIPE,
    ProjectError,
    apply,
    load_project,
    propose,
    recipe_values,
    with_project,
)
from ml.train.config import SweepConfig, TrainConfig

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def project(tmp_path, monkeypatch):
    """Write ``text`` as the project file the settings name; returns its path."""

    def write(text: str) -> Path:
        path = tmp_path / "skinflow.yaml"
        path.write_text(text)
        monkeypatch.setenv("SKINFLOW_PROJECT_FILE", str(path))
        from ml.settings import get_settings

        get_settings.cache_clear()
        return path

    yield write
    from ml.settings import get_settings

    get_settings.cache_clear()


def test_no_default_file_is_an_empty_project_but_a_named_missing_file_is_an_error(tmp_path, monkeypatch):
    monkeypatch.delenv("SKINFLOW_PROJECT_FILE")
    monkeypatch.chdir(tmp_path)
    assert load_project().values == {} and apply(TrainConfig, None) == TrainConfig()
    monkeypatch.setenv("SKINFLOW_PROJECT_FILE", str(tmp_path / "nope.yaml"))
    with pytest.raises(ProjectError, match="nope.yaml: no such project file"):
        load_project()


@pytest.mark.parametrize(
    "text,message",
    [
        ("trainig: {epochs: 3}\n", "unknown project key 'trainig' (did you mean 'training'?)"),
        ("training: {arh: resnet18}\n", "unknown training key 'arh' (did you mean 'arch'?)"),
        ("training: {epochs: 0}\n", "training.epochs: Input should be greater than 0"),
        ("training: {arch: vgg}\n", "training.arch: Input should be"),
        ("data: [a, b]\n", "data must be a mapping of DataConfig fields"),
        ("data: {source: a\n  size: 3: 4\n", "line 2: not valid YAML"),
        ("- a\n", "must be a mapping of sections"),
    ],
)
def test_every_mistake_is_one_line_naming_the_file_and_key(project, text, message):
    path = project(text)
    with pytest.raises(ProjectError) as exc:
        load_project()
    assert str(exc.value).startswith(f"{path}: ") and message in str(exc.value) and "\n" not in str(exc.value)


def test_explicit_values_win_over_the_file_which_wins_over_the_class_default(project):
    project("data: {source: /team/images, size: 128}\ntraining: {arch: efficientnet_lite0, epochs: 5}\n")
    built = apply(TrainConfig, TrainConfig(epochs=2))
    assert (built.arch, built.epochs, built.schedule) == ("efficientnet_lite0", 2, TrainConfig().schedule)
    assert apply(TrainConfig, {"arch": "resnet18"}).arch == "resnet18"  # a deployment's mapping
    data, training, sweep = with_project(DataConfig(), TrainConfig(), SweepConfig())
    assert (data.source, data.size, training.epochs) == ("/team/images", 128, 5)
    assert sweep == SweepConfig(), "a section the file leaves out keeps its defaults"
    assert with_project(data)[0] == data, "applying twice changes nothing"


def test_monitor_batch_and_the_registered_model_come_from_the_file(project, monkeypatch):
    project("monitor: {batch: /incoming/latest}\nregistered_model: derm-classifier\n")
    (monitor,) = with_project(MonitorConfig())
    assert monitor.batch == "/incoming/latest"
    assert monitor.monitored_uri() == "models:/derm-classifier@champion"
    from ml.settings import get_settings

    assert get_settings().registered_model == "derm-classifier"
    monkeypatch.setenv("SKINFLOW_REGISTERED_MODEL", "from-env")
    get_settings.cache_clear()
    assert get_settings().registered_model == "from-env", "the environment overrides the project file"


def test_run_names_follow_the_file_where_parameters_leave_a_field_out(project):
    from flows.naming import flow_run_name

    project("data: {source: /team/derm_photos}\ntraining: {arch: efficientnet_lite0, schedule: adam}\n")
    assert flow_run_name("train", {}) == "train-derm_photos-efficientnet_lite0-adam"
    assert flow_run_name("train", {"training": {"schedule": "sgd"}}) == "train-derm_photos-efficientnet_lite0-sgd"
    assert flow_run_name("train", {"training": TrainConfig(arch="resnet18")}).endswith("-resnet18-adam")


def test_cli_options_override_the_file_and_a_broken_file_is_exit_2(project, tmp_path):
    from flows.cli import app
    from flows.cli.runner import build

    project("training: {arch: efficientnet_lite0, epochs: 5}\n")
    assert build(TrainConfig, epochs=None).epochs == 5 and build(TrainConfig, epochs=2).epochs == 2
    assert build(TrainConfig).arch == "efficientnet_lite0"
    project("training: {epochs: -1}\n")
    out = CliRunner().invoke(app, ["train", "--data", str(tmp_path)])
    assert out.exit_code == 2 and "training.epochs" in out.output


def _photos(root: Path) -> Path:
    from PIL import Image

    for label in ("nevus", "melanoma"):
        (root / label).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (300, 200), (120 + i, 80, 60)).save(root / label / f"{i}.jpg")
    return root


def test_init_proposes_the_pretrained_recipe_for_photographs_and_never_overwrites(tmp_path, monkeypatch):
    from flows.cli import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SKINFLOW_PROJECT_FILE")
    photos = _photos(tmp_path / "photos")
    runner = CliRunner()
    out = runner.invoke(app, ["init", "--data", str(photos), "--batch", "/incoming"])
    assert out.exit_code == 0, out.output
    written = tmp_path / "skinflow.yaml"
    values = load_project().values
    assert values["data"]["source"] == str(photos)
    assert (values["training"]["arch"], values["training"]["weights"]) == ("efficientnet_lite0", "imagenet")
    assert values["sweep"]["archs"] == ["efficientnet_lite0"] and values["monitor"] == {"batch": "/incoming"}
    assert "# 3x fewer pixels" in written.read_text(), "each value says why it was chosen"
    before = written.read_bytes()
    again = runner.invoke(app, ["init", "--data", str(photos)])
    assert again.exit_code == 2 and "exists" in again.output and written.read_bytes() == before
    missing = runner.invoke(app, ["init", "--data", str(tmp_path / "nope"), "--force"])
    assert missing.exit_code == 2 and written.read_bytes() == before


def test_init_on_the_demo_set_writes_what_the_demo_trains(tmp_path):
    from flows.demo import PROFILES
    from ml.data.synth import SynthConfig, generate

    generate(tmp_path / "synth", SynthConfig(per_class=2, size=24, seed=0), progress=False)
    values = yaml.safe_load(propose(str(tmp_path / "synth")))
    for section, fields in recipe_values(DEMO_RECIPE).items():
        assert {k: values[section][k] for k in fields} == fields == PROFILES["cpu"][section]
    assert values["training"]["weights"] == "imagenet", "the packaged ImageNet weights: no download"


def test_help_of_init_creates_no_file(tmp_path, monkeypatch):
    from flows.cli import app

    monkeypatch.chdir(tmp_path)
    assert CliRunner().invoke(app, ["init", "--help"]).exit_code == 0
    assert list(tmp_path.iterdir()) == []


def test_no_deployment_names_the_demo_set_or_a_recipe():
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    for dep in spec["deployments"]:
        params = dep.get("parameters") or {}
        assert not {"data", "training", "sweep"} & set(params), (dep["name"], dep["entrypoint"], params)
        assert "demo" not in yaml.safe_dump(params), dep["entrypoint"]


def test_drift_takes_its_batch_from_the_file_when_none_is_given(project, tmp_path):
    from flows.cli import app

    runner = CliRunner()
    project("# empty\n")
    out = runner.invoke(app, ["drift"])
    assert out.exit_code == 2 and "no batch to check" in out.output and "monitor.batch" in out.output
    project(f"monitor: {{batch: {tmp_path / 'incoming'}}}\n")
    out = runner.invoke(app, ["drift"])
    assert out.exit_code == 2 and f"batch {tmp_path / 'incoming'} does not exist" in out.output
