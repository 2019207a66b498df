"""Drive ``infra/stack.sh`` from Python: a stack of either profile on free 127.0.0.1 ports in a
run directory of its own (used by the test fixtures ``local_stack``/``team_stack`` and by
bench/bench_load.py). Standard library only."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STACK_SH = REPO / "infra" / "stack.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def read_stack_env(path: Path) -> dict[str, str]:
    """The exports of a stack's ``env`` file as a dict."""
    lines = [ln.removeprefix("export ") for ln in path.read_text().splitlines() if ln.startswith("export ")]
    return dict(ln.split("=", 1) for ln in lines)


def api_auth(env: dict[str, str]) -> tuple[str, str] | None:
    """The Prefect API's basic-auth ``(user, password)`` of a stack's client environment
    (``PREFECT_API_AUTH_STRING``, set by the team profile), for HTTP clients; None without it."""
    value = env.get("PREFECT_API_AUTH_STRING")
    if not value:
        return None
    user, _, password = value.partition(":")
    return user, password


class Stack:
    """An ``infra/stack.sh`` stack (profile ``sqlite`` or ``postgres``) in ``run_dir`` on free ports.

    ``start()`` runs ``up``; ``stop()`` runs ``down``, checks that no port listens and no pid or env
    file is left, then purges the databases and secrets."""

    def __init__(self, run_dir: Path, profile: str, venv: Path | None = None):
        self.run_dir, self.profile = Path(run_dir), profile
        names = ["S3", "MLFLOW", "PREFECT"] + (["PG", "RAY", "RAY_DASHBOARD"] if profile == "postgres" else [])
        self.ports: dict[str, int] = {}
        for k in names:  # the OS may hand the same free port out twice in a row: draw until distinct
            while (port := free_port()) in self.ports.values():
                pass
            self.ports[k] = port
        self.script_env = {
            **os.environ,
            "VENV": str(venv or Path(sys.executable).parent.parent),
            "SKINFLOW_STACK_DIR": str(self.run_dir),
            "SKINFLOW_DATA_ROOT": str(self.run_dir / "data"),
            "SKINFLOW_STACK_DB": profile,
            **{f"SKINFLOW_{k}_PORT": str(v) for k, v in self.ports.items()},
        }
        self.up: subprocess.CompletedProcess | None = None

    def sh(self, *args: str, timeout: float = 400) -> subprocess.CompletedProcess:
        """``infra/stack.sh ARGS...`` with this stack's configuration."""
        return subprocess.run(
            ["bash", str(STACK_SH), *args], env=self.script_env, capture_output=True, text=True, timeout=timeout
        )

    @property
    def env(self) -> dict[str, str]:
        """The stack's client environment (``<run_dir>/env``: URLs, bucket, S3 and Ray credentials)."""
        return read_stack_env(self.run_dir / "env")

    def client_env(self, **extra: str) -> dict[str, str]:
        """``os.environ`` plus :attr:`env`, with a Prefect home of its own: for CLI subprocesses."""
        return {**os.environ, **self.env, "PREFECT_HOME": str(self.run_dir / "cli-home"), "PWD": str(REPO), **extra}

    def pid(self, service: str) -> int | None:
        """The pid (= process group id) of a running service (``postgres``: the postmaster), else None."""
        f = self.run_dir / "pids" / f"{service}.pid"
        if not f.exists():
            return None
        pid = int(f.read_text())
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return None
        return None if stat.rsplit(")", 1)[1].split()[0] == "Z" else pid  # a zombie is dead too

    def describe(self) -> dict[str, str]:
        """``stack.sh describe``: the topology as key -> value (no secrets)."""
        out = self.sh("describe", timeout=30)
        if out.returncode != 0:
            raise RuntimeError(out.stderr)
        return dict(line.split("=", 1) for line in out.stdout.splitlines())

    @property
    def services(self) -> list[str]:
        return self.describe()["services"].split()

    def pids(self) -> dict[str, int | None]:
        return {s: self.pid(s) for s in self.services}

    def restart(self, service: str) -> None:
        """Start one service again (after it was killed or stopped) and wait until it is healthy."""
        out = self.sh("restart", service)
        if out.returncode != 0:
            raise RuntimeError(f"stack.sh restart {service} failed:\n{out.stderr[-3000:]}")

    def start(self, timeout: float = 900) -> Stack:
        try:
            self.up = self.sh("up", timeout=timeout)
        except subprocess.TimeoutExpired as exc:  # the services run in their own sessions: stop them
            self.sh("down", "--purge")
            raise RuntimeError(
                f"stack.sh up --db {self.profile} took over {timeout:.0f} s (logs: {self.run_dir / 'logs'})"
            ) from exc
        except BaseException:  # e.g. pytest-timeout interrupting the start: stop what was started
            self.sh("down", "--purge")
            raise
        if self.up.returncode != 0:
            self.sh("down", "--purge")
            raise RuntimeError(f"stack.sh up --db {self.profile} failed:\n{self.up.stderr[-3000:]}")
        return self

    def stop(self) -> None:
        down = self.sh("down")
        try:
            if down.returncode != 0:
                raise RuntimeError(f"stack.sh down failed:\n{down.stderr[-3000:]}")
            if still := [p for p in self.ports.values() if listening(p)]:
                raise RuntimeError(f"stack ports still listening after down: {still}")
            if list((self.run_dir / "pids").glob("*.pid")) or (self.run_dir / "env").exists():
                raise RuntimeError("pid or env files left after down")
        finally:
            self.sh("down", "--purge")
