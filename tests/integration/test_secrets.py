"""Secrets never leak: credentialed URIs and secret variables go through the one redaction in
every output, the Prefect database and the MLflow store; and a credentialed MLflow URI works
against a real server that requires basic auth. The CLI runs as a user runs it, in a subprocess
with its own HOME and PREFECT_HOME, against the session's Prefect server (whose database is
searched); the ephemeral-server path of a fresh machine is tests/integration/test_fresh_home.py's."""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

import pytest

from tests.conftest import VENV_BIN, Service, free_port

pytestmark = pytest.mark.slow
TAIL = "Tail" + secrets.token_hex(4)  # after an "@" inside the password: a regex stopping at the first "@" leaks it
PASSWORD = "pw" + secrets.token_hex(6) + "@" + TAIL
AWS_SECRET = "aws" + secrets.token_hex(10)
ADMIN_PASSWORD = "admin" + secrets.token_hex(6)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from ml.data.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("secrets-data")
    generate(root / "ds", SynthConfig(per_class=10, size=64, seed=4), progress=False)
    return root / "ds"


@pytest.fixture(scope="module")
def prefect_db(prefect_harness) -> tuple[str, Path]:
    """The session Prefect server's API URL and the folder of its sqlite database."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_DATABASE_CONNECTION_URL

    db = Path(PREFECT_SERVER_DATABASE_CONNECTION_URL.value().split(":///", 1)[1])
    assert db.parent.is_dir()
    return PREFECT_API_URL.value(), db.parent


def _env(tmp: Path, tracking_uri: str, prefect_api: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "SKINFLOW_"))}
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    return {
        **keep,
        "HOME": str(home),
        "PREFECT_HOME": str(tmp / "prefect"),
        "PREFECT_API_URL": prefect_api,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "SKINFLOW_DATA_ROOT": str(tmp / "data"),
        "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
    }


def _skinflow(args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(VENV_BIN / "skinflow"), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )


def _leaks(folder: Path, *needles: str) -> list[str]:
    """Files under ``folder`` (databases and WAL files included) holding any needle."""
    found = []
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path} holds {n[:4]}..." for n in needles if n.encode() in data]
    return found


def test_credentials_never_reach_outputs_or_the_prefect_database(dataset, prefect_db, tmp_path):
    dead = f"http://alice:{PASSWORD}@127.0.0.1:{free_port()}/"
    api, db_folder = prefect_db
    # one retry, 1 s on: the server stays down, and what is checked is what the failures print and store
    env = {**_env(tmp_path, dead, api), "SKINFLOW_IO_RETRY_DELAYS": "[1]"}
    validate_runs_before = len(_flow_runs(api, "validate"))
    manifest = _skinflow(["data", "manifest", str(dataset)], env, tmp_path)
    validate = _skinflow(["validate", str(dataset), "--out", str(tmp_path / "val")], env, tmp_path)
    # the findings are printed, then what could not be recorded, naming the service: exit 3
    assert validate.returncode == 3, validate.stdout[-2000:] + validate.stderr[-2000:]
    assert "PASS" in validate.stdout and "MLflow tracking server at http://***@127.0.0.1" in validate.stderr
    assert "Traceback" not in validate.stderr
    train = _skinflow(["train", "--data", str(dataset), "--size", "32", "--epochs", "1", "--lr", "0.01"], env, tmp_path)
    assert train.returncode == 3 and "unreachable" in train.stderr, train.stderr[-2000:]
    for run in (manifest, validate, train):
        assert PASSWORD not in run.stdout + run.stderr and AWS_SECRET not in run.stdout + run.stderr
        assert TAIL not in run.stdout + run.stderr, "the part of the password after its '@' leaked"
    # the validate run reached the Prefect server whose database is searched
    assert len(_flow_runs(api, "validate")) == validate_runs_before + 1
    assert not _leaks(db_folder, PASSWORD, TAIL, AWS_SECRET), "Prefect's database stores no secret"
    assert not _leaks(tmp_path / "prefect", PASSWORD, TAIL, AWS_SECRET), "nor does the Prefect home"
    assert not _leaks(tmp_path / "val", PASSWORD, TAIL, AWS_SECRET)


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """A real MLflow server with basic auth (admin user and password from its config)."""
    root = tmp_path_factory.mktemp("mlflow-auth")
    ini = root / "auth.ini"
    ini.write_text(
        f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{root}/auth.db\n"
        f"admin_username = admin\nadmin_password = {ADMIN_PASSWORD}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    port = free_port()
    svc = Service(
        "mlflow-auth",
        [
            str(VENV_BIN / "mlflow"),
            "server",
            "--app-name",
            "basic-auth",
            "--backend-store-uri",
            f"sqlite:///{root}/mlflow.db",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--serve-artifacts",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        f"http://127.0.0.1:{port}/health",
        root,
        env={"MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(8)},
        timeout=150,
    )
    yield port, root
    svc.close()


def test_a_credentialed_tracking_uri_works_against_basic_auth(auth_server, dataset, prefect_db, tmp_path):
    import requests

    port, root = auth_server
    api = prefect_db[0]
    base = f"http://127.0.0.1:{port}"
    # the server really requires the credentials
    assert requests.get(f"{base}/api/2.0/mlflow/experiments/search?max_results=1", timeout=10).status_code == 401
    wrong = _skinflow(
        ["validate", str(dataset), "--out", str(tmp_path / "v0")],
        _env(tmp_path, f"http://admin:wrong{PASSWORD}@127.0.0.1:{port}/", api),
        tmp_path,
    )
    assert wrong.returncode == 3 and "refused the credentials" in wrong.stderr, wrong.stderr[-2000:]
    env = _env(tmp_path, f"http://admin:{ADMIN_PASSWORD}@127.0.0.1:{port}/", api)
    ok = _skinflow(["validate", str(dataset), "--out", str(tmp_path / "v1")], env, tmp_path)
    assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-3000:]
    found = requests.post(
        f"{base}/api/2.0/mlflow/runs/search",
        auth=("admin", ADMIN_PASSWORD),
        timeout=10,
        json={"experiment_ids": [_experiment_id(base, "skinflow-validate")]},
    ).json()
    assert len(found["runs"]) == 1 and found["runs"][0]["info"]["status"] == "FINISHED"
    # the variables form works too, and nothing stores or prints a password
    env2 = {
        **_env(tmp_path, base, api),
        "MLFLOW_TRACKING_USERNAME": "admin",
        "MLFLOW_TRACKING_PASSWORD": ADMIN_PASSWORD,
    }
    ok2 = _skinflow(["validate", str(dataset), "--out", str(tmp_path / "v2")], env2, tmp_path)
    assert ok2.returncode == 0, ok2.stderr[-3000:]
    for run in (wrong, ok, ok2):
        assert ADMIN_PASSWORD not in run.stdout + run.stderr and PASSWORD not in run.stdout + run.stderr
    assert not _leaks(root, PASSWORD, AWS_SECRET), "the MLflow store holds no secret of ours"
    mlflow_db = (root / "mlflow.db").read_bytes()
    assert ADMIN_PASSWORD.encode() not in mlflow_db
    assert not _leaks(tmp_path / "prefect", ADMIN_PASSWORD, PASSWORD, AWS_SECRET)


def _experiment_id(base: str, name: str) -> str:
    import requests

    r = requests.get(
        f"{base}/api/2.0/mlflow/experiments/get-by-name",
        params={"experiment_name": name},
        auth=("admin", ADMIN_PASSWORD),
        timeout=10,
    )
    return r.json()["experiment"]["experiment_id"]


def _flow_runs(api: str, name_part: str) -> list[dict]:
    """Flow runs on the Prefect server at ``api`` whose flow name contains ``name_part``."""
    import requests

    runs = requests.post(f"{api}/flow_runs/filter", json={"limit": 200}, timeout=10).json()
    flows = {f["id"]: f["name"] for f in requests.post(f"{api}/flows/filter", json={}, timeout=10).json()}
    return [r for r in runs if name_part in flows.get(r["flow_id"], "")]
