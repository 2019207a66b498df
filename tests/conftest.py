"""Shared fixtures: real services started once per test session on 127.0.0.1 free ports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
ISIC9 = REPO.parent / "shared" / "data" / "isic9"
_REGISTRY_AT_START = os.environ.get("MLFLOW_REGISTRY_URI")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"service for {url} exited with {proc.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status < 500:
                    return
        except Exception:
            time.sleep(0.3)
    raise TimeoutError(f"{url} not healthy after {timeout}s")


class Service:
    """A subprocess bound to 127.0.0.1, stopped (whole process group) on close."""

    def __init__(self, name: str, cmd: list[str], health: str, log_dir: Path, env: dict | None = None,
                 timeout: float = 90):
        self.log = log_dir / f"{name}.log"
        self.proc = subprocess.Popen(cmd, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})}, start_new_session=True, cwd=log_dir)
        try:
            wait_http(health, timeout, self.proc, self.log)
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(5)


@pytest.fixture(scope="session")
def aws_env():
    """Dummy credentials for the local moto endpoint (never real secrets)."""
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory, aws_env):
    """A real S3 HTTP endpoint: moto's standalone server on a free 127.0.0.1 port."""
    port = free_port()
    logs = tmp_path_factory.mktemp("moto")
    svc = Service("moto", [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                  f"http://127.0.0.1:{port}/moto-api/", logs, env=aws_env, timeout=60)
    yield f"http://127.0.0.1:{port}"
    svc.close()


@pytest.fixture()
def s3(s3_endpoint):
    """``(storage, bucket_uri)``: a fresh bucket on the real local endpoint per test."""
    from ml.settings import Settings
    from ml.storage import Storage

    settings = Settings(s3_endpoint_url=s3_endpoint, s3_max_attempts=2)
    storage = Storage(settings)
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    storage.client.create_bucket(Bucket=bucket)
    return storage, f"s3://{bucket}"


@pytest.fixture(scope="session")
def isic9() -> Path:
    if not ISIC9.is_dir():
        pytest.skip(f"real-data test: {ISIC9} is absent (it is provided at ../shared/data/isic9)")
    return ISIC9


@pytest.fixture(scope="session")
def synth_small(tmp_path_factory) -> Path:
    """A tiny synthetic SD-198-style ImageFolder (10 classes x 8 images, 32 px)."""
    from ml.data.synth import SynthConfig, generate

    out = tmp_path_factory.mktemp("synth") / "ds"
    generate(out, SynthConfig(per_class=8, size=32, seed=0), progress=False)
    return out


def use_local_stores(mp: pytest.MonkeyPatch, root: Path) -> None:
    """Point the data root and the MLflow store (sqlite) at ``root`` for a test module."""
    from ml.settings import get_settings
    from ml.tracking import runs as tracking_runs

    mp.setenv("SKINFLOW_DATA_ROOT", str(root / "data"))
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
    get_settings.cache_clear()
    tracking_runs.configure_mlflow(get_settings().mlflow_tracking_uri)


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="session")
def prefect_harness():
    """A real (temporary, sqlite-backed) Prefect API server for the session's flow runs."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray (2 CPUs) on 127.0.0.1, started once and shut down at the end of the session."""
    import ray

    from tasks.tuning import start_local_ray

    start_local_ray(num_cpus=2, env_vars={"OMP_NUM_THREADS": "1"})
    yield
    ray.shutdown()


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def read_stack_env(path: Path) -> dict[str, str]:
    """The exports of ``.stack/env`` as a dict."""
    lines = [ln.removeprefix("export ") for ln in path.read_text().splitlines() if ln.startswith("export ")]
    return dict(ln.split("=", 1) for ln in lines)


STACK_SH = REPO / "infra" / "stack.sh"


class Stack:
    """A real infra/stack.sh stack on free 127.0.0.1 ports in its own run dir (see ``team_stack``)."""

    def __init__(self, run_dir: Path, profile: str):
        self.run_dir, self.profile = run_dir, profile
        names = ["S3", "MLFLOW", "PREFECT"] + (["PG", "RAY"] if profile == "postgres" else [])
        self.ports = {k: free_port() for k in names}
        self.script_env = {
            **os.environ,
            "VENV": str(Path(sys.executable).parent.parent),
            "SKINFLOW_STACK_DIR": str(run_dir),
            "SKINFLOW_DATA_ROOT": str(run_dir / "data"),
            "SKINFLOW_STACK_DB": profile,
            **{f"SKINFLOW_{k}_PORT": str(v) for k, v in self.ports.items()},
        }
        self.up: subprocess.CompletedProcess | None = None

    def sh(self, *args: str, timeout: float = 400) -> subprocess.CompletedProcess:
        """``infra/stack.sh ARGS...`` with this stack's configuration."""
        return subprocess.run(["bash", str(STACK_SH), *args], env=self.script_env, capture_output=True, text=True,
                              timeout=timeout)

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
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    @property
    def services(self) -> list[str]:
        return self.describe()["services"].split()

    def pids(self) -> dict[str, int | None]:
        return {s: self.pid(s) for s in self.services}

    def describe(self) -> dict[str, str]:
        out = self.sh("describe", timeout=30)
        assert out.returncode == 0, out.stderr
        return dict(line.split("=", 1) for line in out.stdout.splitlines())

    def restart(self, service: str) -> None:
        """Start one service again (after a test killed or stopped it) and wait until it is healthy."""
        out = self.sh("restart", service)
        assert out.returncode == 0, out.stderr[-3000:]

    def start(self) -> None:
        self.up = self.sh("up")
        if self.up.returncode != 0:
            self.sh("down", "--purge")
            raise AssertionError(f"stack.sh up --db {self.profile} failed:\n{self.up.stderr[-3000:]}")

    def stop(self) -> None:
        """``down``, checking that nothing is left listening and no pid/env file remains; then purge."""
        down = self.sh("down")
        try:
            assert down.returncode == 0, down.stderr
            assert not [p for p in self.ports.values() if listening(p)], "a stack port is still listening"
            assert not list((self.run_dir / "pids").glob("*.pid")) and not (self.run_dir / "env").exists()
        finally:
            self.sh("down", "--purge")


def _stack(tmp_path_factory, profile: str):
    stack = Stack(tmp_path_factory.mktemp(f"stack-{profile}"), profile)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory):
    """The real local stack (infra/stack.sh, sqlite profile) on free ports: ``(run_dir, ports, sh, up)``.

    Started once per session (~30 s) and always brought down, checking that nothing is left
    listening and no pid/env file remains. Flow runs of its worker keep their data under
    ``run_dir/data``."""
    for stack in _stack(tmp_path_factory, "sqlite"):
        yield stack.run_dir, stack.ports, stack.sh, stack.up


@pytest.fixture(scope="session")
def team_stack(tmp_path_factory):
    """The team topology (``infra/stack.sh up --db postgres``) on free 127.0.0.1 ports: a :class:`Stack`.

    PostgreSQL (MLflow and Prefect metadata), moto S3, MLflow and Prefect servers, a Ray head plus
    a second Ray node, two Prefect workers (services ``worker`` and ``worker2``). Started once per
    session (~60 s on 2 cores) and always brought down and purged. Tests that kill a service
    bring it back with ``stack.restart(name)``."""
    yield from _stack(tmp_path_factory, "postgres")


@pytest.fixture(autouse=True)
def _mlflow_globals_follow_the_environment():
    """Code under test calls mlflow.set_tracking_uri/set_experiment (process globals); after each
    test MLflow goes back to reading MLFLOW_TRACKING_URI, so stores never leak between tests."""
    # tests and fixtures choose the tracking store through MLFLOW_TRACKING_URI; none chooses a
    # separate registry, so MLFLOW_REGISTRY_URI always returns to its value at session start
    saved = {"MLFLOW_TRACKING_URI": os.environ.get("MLFLOW_TRACKING_URI"), "MLFLOW_REGISTRY_URI": _REGISTRY_AT_START}
    yield
    for k, v in saved.items():  # set_tracking_uri/set_registry_uri also export these
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    import mlflow.tracking._model_registry.utils as registry
    import mlflow.tracking._tracking_service.utils as tracking_service
    import mlflow.tracking.fluent as fluent

    tracking_service._tracking_uri = None
    registry._registry_uri = None
    fluent._active_experiment_id = None
