"""Shared fixtures: real services started once per test session on 127.0.0.1 free ports."""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from infra.local_stack import STACK_SH, Stack, free_port, listening, read_stack_env  # noqa: F401

os.environ.setdefault("OMP_NUM_THREADS", "1")
# The MLflow servers tests start run without MLflow's GenAI job runners (8 processes each), as the
# stack's does (infra/stack.sh): they serve nothing skinflow uses and cost ~12 CPU s per start.
os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
ISIC9 = REPO.parent / "shared" / "data" / "isic9"
_REGISTRY_AT_START = os.environ.get("MLFLOW_REGISTRY_URI")
# A project file (skinflow.yaml) a developer wrote in the checkout must not change what the tests
# train: every test reads an empty one unless it names its own (tests/unit/test_project.py).
_EMPTY_PROJECT = Path(os.environ.get("TMPDIR", "/tmp")) / f"skinflow-empty-project-{os.getpid()}.yaml"
_EMPTY_PROJECT.write_text("# no project: the config classes' defaults\n")
os.environ["SKINFLOW_PROJECT_FILE"] = str(_EMPTY_PROJECT)
atexit.register(_EMPTY_PROJECT.unlink, missing_ok=True)


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

    def __init__(
        self, name: str, cmd: list[str], health: str, log_dir: Path, env: dict | None = None, timeout: float = 90
    ):
        self.log = log_dir / f"{name}.log"
        self.proc = subprocess.Popen(
            cmd,
            stdout=open(self.log, "wb"),
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
            cwd=log_dir,
        )
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
    svc = Service(
        "moto",
        [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        f"http://127.0.0.1:{port}/moto-api/",
        logs,
        env=aws_env,
        timeout=60,
    )
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
def prefect_harness(tmp_path_factory):
    """A real (temporary, sqlite-backed) Prefect API server for the session's flow runs, with its
    own result storage: a stored task result (a manifest, a range test) from a developer's own
    runs in ~/.prefect/storage never answers for a test."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    storage = tmp_path_factory.mktemp("prefect-storage")
    with prefect_test_harness(server_startup_timeout=120), temporary_settings({PREFECT_LOCAL_STORAGE_PATH: storage}):
        yield


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray (2 CPUs) on 127.0.0.1, started once and shut down at the end of the session."""
    import ray

    from ml.train.ray_runtime import start_local_ray

    start_local_ray(num_cpus=2, env_vars={"OMP_NUM_THREADS": "1"})
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory):
    """The real local stack (infra/stack.sh, sqlite profile) on free ports: ``(run_dir, ports, sh, up)``.

    Started once per session (~30 s) and always brought down, checking that nothing is left
    listening and no pid/env file remains. Flow runs of its worker keep their data under
    ``run_dir/data``."""
    stack = Stack(tmp_path_factory.mktemp("stack-sqlite"), "sqlite").start()
    try:
        yield stack.run_dir, stack.ports, stack.sh, stack.up
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def team_stack(tmp_path_factory):
    """The team topology (``infra/stack.sh up --db postgres``) on free 127.0.0.1 ports: a :class:`Stack`.

    PostgreSQL (MLflow and Prefect metadata), moto S3, MLflow and Prefect servers, a Ray head plus
    a second Ray node, two Prefect workers (services ``worker`` and ``worker2``). Started once per
    session (~60 s on 2 cores) and always brought down and purged. Tests that kill a service
    bring it back with ``stack.restart(name)``."""
    stack = Stack(tmp_path_factory.mktemp("stack-postgres"), "postgres").start()
    try:
        yield stack
    finally:
        stack.stop()


def mlflow_env() -> dict[str, str | None]:
    """What MLflow's process globals follow: the variables :func:`restore_mlflow` puts back.
    Tests and fixtures choose the tracking store through MLFLOW_TRACKING_URI; none chooses a
    separate registry, so MLFLOW_REGISTRY_URI always returns to its value at session start.
    mlflow.set_experiment also exports MLFLOW_EXPERIMENT_ID (for subprocesses): a later test's
    start_run on another store would look that id up there and fail."""
    return {
        "MLFLOW_TRACKING_URI": os.environ.get("MLFLOW_TRACKING_URI"),
        "MLFLOW_REGISTRY_URI": _REGISTRY_AT_START,
        "MLFLOW_EXPERIMENT_ID": os.environ.get("MLFLOW_EXPERIMENT_ID"),
        "MLFLOW_EXPERIMENT_NAME": os.environ.get("MLFLOW_EXPERIMENT_NAME"),
    }


def restore_mlflow(saved: dict[str, str | None]) -> None:
    """Put back the variables of :func:`mlflow_env` and let MLflow read them again (its
    set_tracking_uri/set_registry_uri/set_experiment keep globals and export variables)."""
    for k, v in saved.items():
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


@pytest.fixture(autouse=True)
def _mlflow_globals_follow_the_environment():
    """Code under test calls mlflow.set_tracking_uri/set_experiment (process globals); after each
    test MLflow goes back to reading the environment, so stores never leak between tests (a
    module fixture that sets them restores them the same way: :func:`restore_mlflow`)."""
    saved = mlflow_env()
    yield
    restore_mlflow(saved)


# Tests that share a heavy session service run in one xdist worker (``--dist loadgroup``), so
# that each such service starts once per run: the stacks (local and team topology, each with its
# own Prefect server, MLflow server, workers) and Ray (a local one, or two nodes). Every other
# test stays with its module (module-scoped fixtures, such as a trained model, are built once).
_XDIST_GROUPS = (
    ("stacks", {"local_stack", "team_stack"}),
    ("ray", {"ray_local", "ray_two_nodes"}),
)


# tryfirst: xdist's worker turns the xdist_group marks into node-id suffixes in its own
# collection hook, so the marks must be on the items before it runs
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("xdist_group"):  # a module that asks for its stack at run time names it
            continue
        used = set(getattr(item, "fixturenames", ()))
        for group, fixtures in _XDIST_GROUPS:
            if used & fixtures:
                item.add_marker(pytest.mark.xdist_group(group))
                break
        else:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))


def pytest_xdist_node_collection_finished(node, ids):
    """Under ``--dist loadgroup`` every collected test must carry its group in its node id (xdist's
    side channel to the scheduler); without it the groups are silently spread over the workers and
    each shared stack starts once per worker (pytest-dev/pytest-xdist#1386)."""
    if node.config.getoption("dist", None) != "loadgroup":
        return
    lost = [nodeid for nodeid in ids if "@" not in nodeid.rsplit("]", 1)[-1]]
    if lost:
        pytest.exit(
            f"--dist loadgroup lost the xdist_group of {len(lost)} test(s), e.g. {lost[0]}: this pytest and "
            "pytest-xdist do not work together (pytest-dev/pytest-xdist#1386); install the pinned versions "
            "(constraints.txt)",
            returncode=4,
        )
