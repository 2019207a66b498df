"""ml/policies.py: the one loader of the four policy files. Every mistake in a policy file is a
PolicyError naming the file and the key; settings.policies_dir is honoured by every loader."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from ml.data.duplicates import policy_max_distance
from ml.eval.gate import PromotionPolicy
from ml.gan.augcheck import AugCheckPolicy
from ml.monitor.policy import DriftPolicy
from ml.policies import POLICY_NAMES, SHIPPED_DIR, PolicyError, load_policy, shipped_path
from ml.quality import validation
from ml.settings import get_settings

TYPED = {"promotion": PromotionPolicy, "drift": DriftPolicy, "augcheck": AugCheckPolicy}


@pytest.fixture()
def policies_dir(tmp_path, monkeypatch) -> Path:
    """Copies of the shipped files in a folder that the settings name (SKINFLOW_POLICIES_DIR)."""
    folder = tmp_path / "team-policies"
    shutil.copytree(SHIPPED_DIR, folder)
    monkeypatch.setenv("SKINFLOW_POLICIES_DIR", str(folder))
    get_settings.cache_clear()
    yield folder
    monkeypatch.delenv("SKINFLOW_POLICIES_DIR")
    get_settings.cache_clear()


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new))


def _one_line(exc: pytest.ExceptionInfo, *parts: str) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, message
    return message


def test_the_shipped_files_load_cleanly() -> None:
    assert set(POLICY_NAMES) == {p.stem for p in SHIPPED_DIR.glob("*.yaml")}
    for name in POLICY_NAMES:
        assert load_policy(name, shipped_path(name)) == yaml.safe_load(shipped_path(name).read_text())
    assert validation.load_policy()["duplicates_leakage"]["phash_max_distance"] == policy_max_distance()
    assert PromotionPolicy.load().min_disjoint_heldout >= 1
    assert DriftPolicy.load().cooldown_s > 0
    assert AugCheckPolicy.load().estimate == "mean_posterior"


def test_policies_dir_from_the_settings_is_honoured_by_every_loader(policies_dir) -> None:
    _edit(policies_dir / "validation.yaml", "phash_max_distance: 4", "phash_max_distance: 7")
    _edit(policies_dir / "validation.yaml", "min_per_class: 10", "min_per_class: 3")
    _edit(policies_dir / "promotion.yaml", "min_disjoint_heldout: 50", "min_disjoint_heldout: 17")
    _edit(policies_dir / "drift.yaml", "cooldown_s: 3600", "cooldown_s: 60")
    _edit(policies_dir / "augcheck.yaml", "max_spread: 0.10", "max_spread: 0.25")
    assert validation.load_policy()["class_balance"]["min_per_class"] == 3
    assert policy_max_distance() == 7
    assert PromotionPolicy.load().min_disjoint_heldout == 17
    assert DriftPolicy.load().cooldown_s == 60
    assert AugCheckPolicy.load().max_spread == 0.25
    # an explicit path still wins over the settings' folder
    assert PromotionPolicy.load(shipped_path("promotion")).min_disjoint_heldout == 50
    assert policy_max_distance(shipped_path("validation")) == 4


def test_a_missing_policy_file_names_the_file(policies_dir) -> None:
    (policies_dir / "drift.yaml").unlink()
    with pytest.raises(PolicyError) as exc:
        DriftPolicy.load()
    _one_line(exc, str(policies_dir / "drift.yaml"), "no such drift policy file")
    with pytest.raises(PolicyError) as exc:
        validation.load_policy(policies_dir / "nowhere.yaml")
    _one_line(exc, "nowhere.yaml", "no such validation policy file")


@pytest.mark.parametrize("text", ["", "# only comments\n\n"])
def test_an_empty_policy_file_names_the_file(tmp_path, text) -> None:
    path = tmp_path / "promotion.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError) as exc:
        PromotionPolicy.load(path)
    _one_line(exc, str(path), "promotion policy file is empty")


def test_bad_yaml_names_the_file_and_the_line(tmp_path) -> None:
    path = tmp_path / "augcheck.yaml"
    lines = shipped_path("augcheck").read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("tolerance:"))
    lines[at] = "tolerance: [0.1"  # an unclosed flow sequence
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(PolicyError) as exc:
        AugCheckPolicy.load(path)
    message = _one_line(exc, str(path), "not valid YAML")
    assert f"while parsing a flow sequence that starts on line {at + 1})" in message, message
    path.write_text("margin: 0.03\nrecall_floor: 0.3\n  alpha: 0.05\n")
    with pytest.raises(PolicyError) as exc:
        PromotionPolicy.load(path)
    _one_line(exc, str(path), "line 3: not valid YAML (mapping values are not allowed here)")


def test_a_policy_that_is_not_a_mapping_names_the_file(tmp_path) -> None:
    path = tmp_path / "drift.yaml"
    path.write_text("- drifted_share\n- 0.5\n")
    with pytest.raises(PolicyError) as exc:
        DriftPolicy.load(path)
    _one_line(exc, str(path), "must be a mapping of keys to values, got list")


def test_a_missing_key_or_section_names_the_file_and_the_key(policies_dir) -> None:
    path = policies_dir / "validation.yaml"
    shipped = path.read_text()
    _edit(path, "  min_side: 64", "  # min_side: 64")
    with pytest.raises(PolicyError) as exc:
        validation.load_policy()
    _one_line(exc, str(path), "missing validation policy key 'integrity.min_side'")
    with pytest.raises(PolicyError) as exc:
        policy_max_distance()  # the same loader: the whole file is checked
    _one_line(exc, "missing validation policy key 'integrity.min_side'")

    data = yaml.safe_load(shipped)
    del data["curation"]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(PolicyError) as exc:
        validation.load_policy()
    _one_line(exc, str(path), "missing validation policy section 'curation'")

    data = yaml.safe_load(shipped)
    data["curation"] = 3
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(PolicyError) as exc:
        validation.load_policy()
    _one_line(exc, str(path), "validation policy key 'curation' must be a section of keys, got int")

    for name, cls in TYPED.items():
        data = yaml.safe_load(shipped_path(name).read_text())
        key = sorted(data)[0]
        del data[key]
        typed = policies_dir / f"{name}.yaml"
        typed.write_text(yaml.safe_dump(data))
        with pytest.raises(PolicyError) as exc:
            cls.load()
        _one_line(exc, str(typed), f"missing {name} policy key '{key}'")


def test_an_unknown_key_names_the_file_the_key_and_the_closest_valid_one(policies_dir) -> None:
    path = policies_dir / "validation.yaml"
    _edit(path, "  min_side: 64", "  min_sid: 64")
    with pytest.raises(PolicyError) as exc:
        validation.load_policy()
    _one_line(exc, str(path), "unknown validation policy key 'integrity.min_sid' (did you mean 'min_side'?)")

    _edit(policies_dir / "promotion.yaml", "min_improvement: 0.0", "min_improvment: 0.0")
    with pytest.raises(PolicyError) as exc:
        PromotionPolicy.load()
    _one_line(exc, "promotion.yaml", "unknown promotion policy key 'min_improvment' (did you mean 'min_improvement'?)")

    _edit(policies_dir / "drift.yaml", "cooldown_s: 3600", "cooldown_s: 3600\nwebhook: https://example.org\n")
    with pytest.raises(PolicyError) as exc:
        DriftPolicy.load()
    message = _one_line(exc, "drift.yaml", "unknown drift policy key 'webhook'")
    assert "did you mean" not in message

    _edit(policies_dir / "augcheck.yaml", "max_spread: 0.10", "max_sprad: 0.10")
    _edit(policies_dir / "augcheck.yaml", "nn_quantile: 0.05", "nn_quantil: 0.05")
    with pytest.raises(PolicyError) as exc:
        AugCheckPolicy.load()
    _one_line(
        exc,
        "augcheck.yaml",
        "unknown augcheck policy keys 'max_sprad' (did you mean 'max_spread'?), "
        "'nn_quantil' (did you mean 'nn_quantile'?)",
    )


def test_a_value_key_may_hold_a_mapping_where_the_shipped_file_has_a_leaf(policies_dir) -> None:
    """expected_priors is null in the shipped file and {label: weight} in a team's: not a section."""
    _edit(policies_dir / "validation.yaml", "expected_priors: null", "expected_priors: {acne: 2, nevus: 1}")
    assert validation.load_policy()["class_balance"]["expected_priors"] == {"acne": 2, "nevus": 1}


def test_a_value_the_policy_class_refuses_names_the_file(policies_dir) -> None:
    _edit(policies_dir / "promotion.yaml", "superiority_level: 0.95", "superiority_level: 0.3")
    with pytest.raises(PolicyError) as exc:
        PromotionPolicy.load()
    _one_line(exc, str(policies_dir / "promotion.yaml"), "superiority_level must lie in [0.5, 1)")
