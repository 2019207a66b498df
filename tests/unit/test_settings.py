"""The one settings object: embedded defaults, env vars, YAML file, precedence, no secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from ml.settings import Settings


def test_defaults_need_no_service(monkeypatch):
    for var in (
        "MLFLOW_TRACKING_URI",
        "PREFECT_API_URL",
        "RAY_ADDRESS",
        "SKINFLOW_CONFIG",
        "SKINFLOW_S3_BUCKET",
        "SKINFLOW_DATA_ROOT",
        "SKINFLOW_STORAGE_ROOT",
    ):
        monkeypatch.delenv(var, raising=False)
    s = Settings()
    assert s.data_root == Path("data")
    assert s.mlflow_tracking_uri == "sqlite:///mlflow.db"
    assert s.prefect_api_url is None and s.ray_address is None
    assert s.root_uri == "data"
    assert s.uri("datasets", "synth", "abc") == "data/datasets/synth/abc"


def test_tool_variables_and_prefixed_ones_switch_to_servers(monkeypatch):
    monkeypatch.delenv("SKINFLOW_CONFIG", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5050")
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    monkeypatch.setenv("SKINFLOW_S3_BUCKET", "team-bucket")
    monkeypatch.setenv("SKINFLOW_S3_PREFIX", "/skin/")
    monkeypatch.setenv("SKINFLOW_S3_ENDPOINT_URL", "http://127.0.0.1:9000")
    s = Settings()
    assert s.mlflow_tracking_uri == "http://127.0.0.1:5050"
    assert s.prefect_api_url.endswith("/api") and s.ray_address == "ray://head:10001"
    assert s.root_uri == "s3://team-bucket/skin"
    assert s.uri("reports", "validate") == "s3://team-bucket/skin/reports/validate"


def test_yaml_file_is_read_and_env_wins(monkeypatch, tmp_path):
    cfg = tmp_path / "skinflow.yaml"
    cfg.write_text("data_root: /srv/skin\nregistered_model: derm-10\ns3_max_attempts: 7\n")
    monkeypatch.setenv("SKINFLOW_CONFIG", str(cfg))
    monkeypatch.setenv("SKINFLOW_REGISTERED_MODEL", "from-env")
    monkeypatch.delenv("SKINFLOW_DATA_ROOT", raising=False)
    s = Settings()
    assert s.data_root == Path("/srv/skin") and s.s3_max_attempts == 7
    assert s.registered_model == "from-env"


def test_missing_or_malformed_yaml_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("SKINFLOW_CONFIG", str(tmp_path / "nope.yaml"))
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        Settings()
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- list\n")
    monkeypatch.setenv("SKINFLOW_CONFIG", str(bad))
    with pytest.raises(ValueError, match="mapping"):
        Settings()


def test_a_malformed_settings_file_names_the_file_and_the_line(monkeypatch, tmp_path):
    bad = tmp_path / "skinflow.yaml"
    bad.write_text("data_root: /srv\nregistered_model: [unclosed\ns3_region: x\n")
    monkeypatch.setenv("SKINFLOW_CONFIG", str(bad))
    with pytest.raises(ValueError) as err:
        Settings()
    message = str(err.value)
    assert "\n" not in message and str(bad) in message and "line " in message and "not valid YAML" in message


def test_an_unknown_setting_is_refused_with_the_closest_name(monkeypatch, tmp_path):
    cfg = tmp_path / "skinflow.yaml"
    cfg.write_text("data_rot: /srv/skin\nMLFLOW_TRACKING_URI: http://127.0.0.1:5000\n")  # a typo; an alias is fine
    monkeypatch.setenv("SKINFLOW_CONFIG", str(cfg))
    with pytest.raises(ValueError, match=r"unknown setting 'data_rot' \(did you mean 'data_root'\?\)") as err:
        Settings()
    assert str(cfg) in str(err.value) and "MLFLOW" not in str(err.value)


def test_public_dict_masks_credentials_in_uris(monkeypatch):
    monkeypatch.delenv("SKINFLOW_CONFIG", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://mlflow:s3cr3t@db:5432/mlflow")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "topsecret")
    public = Settings().public_dict()
    text = repr(public)
    assert "s3cr3t" not in text and "topsecret" not in text
    assert public["mlflow_tracking_uri"] == "postgresql://***@db:5432/mlflow"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("http://u:pr0be@SecretXY@127.0.0.1:9", "http://***@127.0.0.1:9"),
        (
            "see postgresql://a:b@c@d@db:5432/x and s3://bucket/k@v",
            "see postgresql://***@db:5432/x and s3://bucket/k@v",
        ),
        ("http://host/path?mail=a@b", "http://host/path?mail=a@b"),  # an "@" after the authority is not user info
        ("ray://user:p%40ss@head:10001", "ray://***@head:10001"),
    ],
)
def test_redaction_masks_the_whole_user_info_up_to_the_last_at(text, expected, monkeypatch):
    from ml.settings import redact_text

    assert redact_text(text) == expected


def test_links_drop_the_user_info():
    from ml.settings import without_credentials

    assert without_credentials("http://admin:p@ss@127.0.0.1:5000/x?y=1") == "http://127.0.0.1:5000/x?y=1"
    assert without_credentials("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
