"""How flows run in this process (the CLI, the demo, the benchmarks).

Prefect 3 sends a heartbeat per flow run (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``, 180 s by
default) so that a server automation can mark runs whose process died as crashed. The
heartbeat thread sleeps in 1 s steps and is joined when the flow run ends, which adds up to
1 s to every flow and subflow run (0.5 s on average; the retrain flow has up to three).
With no Prefect API configured the flows talk to an ephemeral server that lives and dies
with this process, so no automation can act on a heartbeat: they are turned off there. With
``PREFECT_API_URL`` set (the local stack, a team server) the configured value is kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def local_flow_settings() -> Iterator[dict]:
    """Context for in-process flow runs; yields the Prefect settings it changed."""
    from prefect import settings as ps

    if ps.PREFECT_API_URL.value():
        yield {}
        return
    updates = {ps.PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
    # the ephemeral server starts with these: services that act on deployments, schedules,
    # workers and paused runs (none of which an in-process run has), and usage telemetry,
    # which has no network here, would only compete with training for the CPU
    updates.update({setting: False for setting in (
        ps.PREFECT_SERVER_ANALYTICS_ENABLED,
        ps.PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED,
        ps.PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED,
        ps.PREFECT_SERVER_SERVICES_FOREMAN_ENABLED,
        ps.PREFECT_SERVER_SERVICES_PAUSE_EXPIRATIONS_ENABLED,
        ps.PREFECT_SERVER_SERVICES_REPOSSESSOR_ENABLED,
        ps.PREFECT_SERVER_SERVICES_CANCELLATION_CLEANUP_ENABLED,
    )})
    with ps.temporary_settings(updates=updates):
        yield {setting.name: value for setting, value in updates.items()}
