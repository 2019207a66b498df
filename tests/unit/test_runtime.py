"""flows.runtime: in-process runs on an ephemeral API get no heartbeats and no deployment services;
with a configured Prefect API nothing changes."""

from __future__ import annotations

from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
    PREFECT_SERVER_ANALYTICS_ENABLED,
    PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED,
    temporary_settings,
)

from flows.runtime import local_flow_settings


def test_heartbeats_off_without_a_prefect_api_and_restored_after() -> None:
    with temporary_settings(updates={PREFECT_API_URL: None, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 60}):
        with local_flow_settings() as changed:
            assert PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value() is None
            assert changed["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] is None
            # an ephemeral server runs no deployment services and no telemetry
            assert PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED.value() is False
            assert PREFECT_SERVER_ANALYTICS_ENABLED.value() is False
        assert PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value() == 60


def test_heartbeats_kept_when_a_prefect_api_is_configured() -> None:
    with temporary_settings(
        updates={PREFECT_API_URL: "http://127.0.0.1:4200/api", PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 60}
    ):
        with local_flow_settings() as changed:
            assert PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value() == 60 and changed == {}


def test_a_first_start_gets_a_longer_allowance_and_a_configured_one_is_kept() -> None:
    """Prefect's 20 s default is too short for the first start on a slow machine (it migrates a new
    SQLite database before answering); a value the user configured wins over ours."""
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as TIMEOUT

    from flows.runtime import STARTUP_TIMEOUT_S

    assert STARTUP_TIMEOUT_S > 20
    with temporary_settings(updates={PREFECT_API_URL: None}, restore_defaults={TIMEOUT}):
        assert TIMEOUT.value() == 20
        with local_flow_settings() as changed:
            assert TIMEOUT.value() == STARTUP_TIMEOUT_S == changed[TIMEOUT.name]
        assert TIMEOUT.value() == 20
    with temporary_settings(updates={PREFECT_API_URL: None, TIMEOUT: 7}):
        with local_flow_settings() as changed:
            assert TIMEOUT.value() == 7 and TIMEOUT.name not in changed


def test_a_configured_prefect_api_keeps_the_startup_allowance_and_prints_nothing(tmp_path, capsys) -> None:
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as TIMEOUT

    with temporary_settings(
        updates={
            PREFECT_API_URL: "http://127.0.0.1:4200/api",
            PREFECT_API_DATABASE_CONNECTION_URL: f"sqlite+aiosqlite:///{tmp_path}/p.db",
        },
        restore_defaults={TIMEOUT},
    ):
        with local_flow_settings() as changed:
            assert changed == {} and TIMEOUT.value() == 20
    assert capsys.readouterr().err == ""


def test_the_first_run_message_only_while_the_sqlite_database_is_missing(tmp_path, capsys) -> None:
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL

    from flows.runtime import prefect_sqlite_path

    db = tmp_path / "home" / "prefect.db"
    with temporary_settings(
        updates={PREFECT_API_URL: None, PREFECT_API_DATABASE_CONNECTION_URL: f"sqlite+aiosqlite:///{db}"}
    ):
        assert prefect_sqlite_path() == db
        with local_flow_settings():
            pass
        err = capsys.readouterr().err
        assert "first run only" in err and str(db) in err
        db.parent.mkdir()
        db.touch()
        with local_flow_settings():
            pass
        assert capsys.readouterr().err == ""
    with temporary_settings(updates={PREFECT_API_DATABASE_CONNECTION_URL: "postgresql+asyncpg://u@db:5432/prefect"}):
        assert prefect_sqlite_path() is None
