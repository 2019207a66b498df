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
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:4200/api",
                                     PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 60}):
        with local_flow_settings() as changed:
            assert PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value() == 60 and changed == {}
