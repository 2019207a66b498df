"""How flows run in this process (the CLI, the demo, the benchmarks).

Prefect 3 sends a heartbeat per flow run (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``, 180 s by
default) so that a server automation can mark runs whose process died as crashed. The
heartbeat thread sleeps in 1 s steps and is joined when the flow run ends, which adds up to
1 s to every flow and subflow run (0.5 s on average; the retrain flow has up to three).
With no Prefect API configured the flows talk to an ephemeral server that lives and dies
with this process, so no automation can act on a heartbeat: they are turned off there. With
``PREFECT_API_URL`` set (the local stack, a team server) the configured value is kept.

The first run on a machine. The ephemeral server is a subprocess that answers its health
check only after it has created and migrated its SQLite database (``PREFECT_HOME/prefect.db``,
``~/.prefect`` by default). Measured on a 2-core machine: 7-8.5 s to healthy with no database,
3.3-3.9 s with one; on a slower 2-core AVX2 machine the first start passed Prefect's default
allowance of 20 s (``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``) and the first
``make demo`` died with "Timed out while attempting to connect to ephemeral Prefect API
server" while every later run would have worked. So, without a Prefect API:

- the allowance is raised to ``STARTUP_TIMEOUT_S`` unless the user configured a value other
  than Prefect's default (environment, profile): a start that takes longer only waits longer,
  and Prefect still fails with the server's output if it never answers (it notices only the
  timeout, so a server that crashes is waited for that long: the price of not failing a slow
  first start);
- when the SQLite file does not exist yet, one line on stderr says why this start is slow.

Ctrl-C. The ephemeral server is a child of this process; in the terminal's process group it got
the same SIGINT as the run and died first, and the run then spent about 70 s retrying a server
that was gone before it exited with a connection error, its flow run left "Running". Here the
server starts in its own session (a terminal's Ctrl-C reaches the run alone) and, on Linux, with
the parent-death signal set, so it still ends with this process however that ends; the run is
marked Crashed by Prefect on the interrupt and the CLI exits 130 within seconds.

Not chosen: a project-local ``PREFECT_HOME``. It would not make the first start faster (any new
home needs the same migration), and it would hide the CLI's runs from the user's own Prefect
(``prefect server start`` shows the runs in ``~/.prefect``). A warm-up that starts the server
before the first flow was not needed either: Prefect starts it on the first client call, and the
longer allowance covers the migration wherever it happens.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

STARTUP_TIMEOUT_S = 120
"""Seconds an in-process run waits for its ephemeral Prefect server (Prefect's default is 20):
~15x the first start measured on 2 cores here, well above the 20+ s seen on a slow machine."""

FIRST_RUN_MESSAGE = "preparing Prefect's local database (first run only, up to a minute or two): {path}"


def prefect_sqlite_path() -> Path | None:
    """The file of the SQLite database the ephemeral server will use; None for another database."""
    from prefect import settings as ps
    from sqlalchemy.engine import make_url

    url = make_url(ps.PREFECT_API_DATABASE_CONNECTION_URL.value())
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def _startup_timeout_configured() -> bool:
    """Whether the user chose another PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS than Prefect's
    default (environment, profile, .env or prefect.toml)."""
    from prefect import settings as ps
    from prefect.settings.models.server.ephemeral import ServerEphemeralSettings

    default = ServerEphemeralSettings.model_fields["startup_timeout_seconds"].default
    return ps.PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value() != default


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
    updates.update(
        {
            setting: False
            for setting in (
                ps.PREFECT_SERVER_ANALYTICS_ENABLED,
                ps.PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED,
                ps.PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED,
                ps.PREFECT_SERVER_SERVICES_FOREMAN_ENABLED,
                ps.PREFECT_SERVER_SERVICES_PAUSE_EXPIRATIONS_ENABLED,
                ps.PREFECT_SERVER_SERVICES_REPOSSESSOR_ENABLED,
                ps.PREFECT_SERVER_SERVICES_CANCELLATION_CLEANUP_ENABLED,
            )
        }
    )
    if not _startup_timeout_configured():
        updates[ps.PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS] = STARTUP_TIMEOUT_S
    db = prefect_sqlite_path()
    if db is not None and not db.exists():
        print(FIRST_RUN_MESSAGE.format(path=db), file=sys.stderr, flush=True)
    with ps.temporary_settings(updates=updates), server_out_of_the_terminal_group():
        yield {setting.name: value for setting, value in updates.items()}


def _own_session_dying_with_parent() -> None:  # in the server's child process, before exec
    import os
    import signal

    os.setsid()
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class _DetachedPopen:
    """``subprocess`` as Prefect's server module sees it while it starts the ephemeral server:
    ``Popen`` puts the child in its own session, dying with its parent."""

    def __getattr__(self, name: str):
        import subprocess

        return getattr(subprocess, name)

    @staticmethod
    def Popen(*args, **kwargs):
        import subprocess

        return subprocess.Popen(*args, preexec_fn=_own_session_dying_with_parent, **kwargs)


@contextmanager
def server_out_of_the_terminal_group() -> Iterator[None]:
    """While inside, an ephemeral Prefect server started by this process runs in its own session
    (see the module's docstring: Ctrl-C)."""
    import subprocess

    from prefect.server.api import server

    original = server.SubprocessASGIServer._run_uvicorn_command

    def run(self):
        server.subprocess = _DetachedPopen()
        try:
            return original(self)
        finally:
            server.subprocess = subprocess

    server.SubprocessASGIServer._run_uvicorn_command = run
    try:
        yield
    finally:
        server.SubprocessASGIServer._run_uvicorn_command = original
