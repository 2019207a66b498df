"""infra/docker-compose.yml, infra/compose.env and infra/ray-cluster.yaml describe the topology
that `infra/stack.sh up --db postgres` starts and the tests run: the same database names, user
and drivers, artifact destination, bucket, work pool, worker and Ray-node counts and ports, so
that they cannot drift apart silently. The stack side is `stack.sh describe` with the script's
defaults (the tests override only ports and directories); test_team_stack.py checks that the
running stack's processes use what describe reports."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from urllib.parse import urlsplit

import pytest
import yaml

from tests.conftest import REPO, STACK_SH

INFRA = REPO / "infra"


def _expand_defaults(text: str) -> str:
    """``${VAR:-default}`` -> default: what compose uses with no .env file; a required
    ``${VAR:?message}`` -> ``<VAR>``, the value infra/.env must give."""
    text = re.sub(r"\$\{([A-Z_]+):\?[^}]*\}", r"<\1>", text)
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", text)


def test_no_secret_has_a_default_in_the_team_stack() -> None:
    """Without infra/.env, compose must refuse to start rather than run on known passwords."""
    for name in ("docker-compose.yml", "compose.env"):
        text = (INFRA / name).read_text()
        for var in ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "RAY_AUTH_TOKEN"):
            assert not re.search(rf"\$\{{{var}:-", text), f"{name}: {var} falls back to a default"
        assert "skinflow-dev" not in text, f"{name} still names a development password"
    compose_text = (INFRA / "docker-compose.yml").read_text()
    for var in ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "RAY_AUTH_TOKEN"):
        assert f"${{{var}:?" in compose_text, f"{var} is not required"


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKINFLOW_")}
    env["SKINFLOW_STACK_DIR"] = str(tmp_path_factory.mktemp("describe"))
    out = subprocess.run(
        ["bash", str(STACK_SH), "describe", "--db", "postgres"], env=env, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    return dict(line.split("=", 1) for line in out.stdout.splitlines())


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(_expand_defaults((INFRA / "docker-compose.yml").read_text()))


def _command(service: dict) -> list[str]:
    cmd = service.get("command", "")
    return shlex.split(cmd) if isinstance(cmd, str) else list(cmd)


def _option(args: list[str], name: str) -> str:
    for i, a in enumerate(args):
        if a == name:
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    raise AssertionError(f"{name} not in {args}")


def _same_database(compose_url: str, stack_url: str) -> None:
    """Driver, user, port and database agree; the host (service name vs 127.0.0.1) and the
    password (compose's .env vs PGPASSWORD) may differ."""
    c, s = urlsplit(compose_url), urlsplit(stack_url)
    assert (c.scheme, c.username, c.port, c.path) == (s.scheme, s.username, s.port, s.path), (compose_url, stack_url)
    assert s.password is None, "the stack's URLs carry no password"


def test_database_urls_agree(compose, stack) -> None:
    services = compose["services"]
    mlflow = _command(services["mlflow"])
    _same_database(_option(mlflow, "--backend-store-uri"), stack["mlflow_backend_store_uri"])
    _same_database(
        services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"], stack["prefect_database_url"]
    )
    pg = services["postgres"]["environment"]
    assert pg["POSTGRES_USER"] == stack["postgres_user"]
    # both databases exist on the compose side: POSTGRES_DB and the init script
    init = (INFRA / "docker" / "postgres-init.sql").read_text()
    dbs = {pg["POSTGRES_DB"], *re.findall(r"CREATE DATABASE (\w+)", init)}
    assert {urlsplit(stack[k]).path.strip("/") for k in ("mlflow_backend_store_uri", "prefect_database_url")} <= dbs
    assert int(stack["postgres_port"]) == 5432  # the port compose's URLs use inside its network


def test_artifacts_bucket_and_ports_agree(compose, stack) -> None:
    services = compose["services"]
    mlflow = _command(services["mlflow"])
    assert _option(mlflow, "--artifacts-destination") == stack["mlflow_artifacts_destination"]
    assert stack["mlflow_artifacts_destination"].startswith(f"s3://{stack['s3_bucket']}/")
    assert compose["x-s3-env"]["SKINFLOW_S3_BUCKET"] == stack["s3_bucket"]
    assert f"local/{stack['s3_bucket']}" in " ".join(_command(services["minio-init"]))

    def published(service: str) -> set[int]:
        return {int(p.split(":")[1]) for p in services[service].get("ports", [])}

    assert int(stack["mlflow_port"]) in published("mlflow")
    assert int(stack["prefect_port"]) in published("prefect-server")


def test_workers_and_ray_nodes_agree(compose, stack) -> None:
    services = compose["services"]
    workers = {n: " ".join(_command(s)) for n, s in services.items() if "prefect worker start" in " ".join(_command(s))}
    assert len(workers) == int(stack["prefect_workers"]) == 2
    for command in workers.values():
        assert f"--pool {stack['work_pool']}" in command
        assert f"work-pool create {stack['work_pool']} --type {stack['work_pool_type']}" in command
    ray = {n: _command(s) for n, s in services.items() if _command(s)[:2] == ["ray", "start"]}
    assert len(ray) == int(stack["ray_nodes"]) == 2
    (head,) = [n for n, args in ray.items() if "--head" in args]
    assert int(_option(ray[head], "--port")) == int(stack["ray_port"])
    # the head serves the Jobs API (`ray job submit`) on the stack's dashboard port
    published = {int(p.split(":")[1]) for p in services[head].get("ports", [])}
    assert int(stack["ray_dashboard_port"]) in published and "--include-dashboard=false" not in ray[head]
    (node,) = set(ray) - {head}
    assert _option(ray[node], "--address") == f"{head}:{stack['ray_port']}"
    assert "worker_node" in _option(ray[node], "--resources")
    for name in workers:  # flow runs join the cluster with its token
        env = services[name]["environment"]
        assert env["RAY_ADDRESS"] == f"{head}:{stack['ray_port']}" and env["RAY_AUTH_MODE"] == "token"
        # heartbeats on, so that the zombie-run automation can mark a run whose worker died Crashed
        assert str(env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"]) == stack["flows_heartbeat_frequency"] == "30"
    applying = [n for n, c in workers.items() if "python infra/apply_automations.py" in c]
    assert len(applying) == 1, "one worker applies infra/automations/ before it starts"
    assert stack["automations"] == "crash-zombie-flow-runs"


def test_prefect_basic_auth_is_on_in_both(compose, stack) -> None:
    """The stack's team profile and compose both run the Prefect server with basic auth, and every
    compose client of it carries the same string, from infra/.env (no default)."""
    assert stack["prefect_api_auth"] == "basic"
    raw = yaml.safe_load((INFRA / "docker-compose.yml").read_text())["services"]
    server = raw["prefect-server"]["environment"]["PREFECT_SERVER_API_AUTH_STRING"]
    assert server == "skinflow:${PREFECT_PASSWORD:?set PREFECT_PASSWORD in infra/.env}"
    clients = [s for s in raw.values() if "PREFECT_API_URL" in (s.get("environment") or {})]
    assert clients and all(s["environment"]["PREFECT_API_AUTH_STRING"] == server for s in clients)
    exports = dict(re.findall(r"^export (\w+)=(\S+)", (INFRA / "compose.env").read_text(), re.M))
    assert exports["PREFECT_API_AUTH_STRING"].startswith("skinflow:${PREFECT_PASSWORD:?")


def test_compose_env_points_at_the_compose_ports(compose, stack) -> None:
    exports = dict(re.findall(r"^export (\w+)=(\S+)", (INFRA / "compose.env").read_text(), re.M))
    services = compose["services"]
    assert urlsplit(exports["MLFLOW_TRACKING_URI"]).port == int(stack["mlflow_port"])
    assert urlsplit(exports["PREFECT_API_URL"]).port == int(stack["prefect_port"])
    minio = {int(p.split(":")[1]) for p in services["minio"]["ports"]}
    assert urlsplit(exports["SKINFLOW_S3_ENDPOINT_URL"]).port in minio
    assert exports["SKINFLOW_S3_BUCKET"] == stack["s3_bucket"]


def test_ray_cluster_yaml_matches_the_stack(stack) -> None:
    cluster = yaml.safe_load((INFRA / "ray-cluster.yaml").read_text())
    head = " ".join(cluster["head_start_ray_commands"])
    assert f"--head --port={stack['ray_port']}" in head
    assert f"--address=$RAY_HEAD_IP:{stack['ray_port']}" in " ".join(cluster["worker_start_ray_commands"])
    setup = " ".join(cluster["setup_commands"])
    assert re.search(rf"MLFLOW_TRACKING_URI=http://[\w.]+:{stack['mlflow_port']}\b", setup)
    assert re.search(rf"PREFECT_API_URL=http://[\w.]+:{stack['prefect_port']}/api\b", setup)
    assert f"SKINFLOW_S3_BUCKET={stack['s3_bucket']}" in setup
    workers = [t for n, t in cluster["available_node_types"].items() if n != cluster["head_node_type"]]
    assert workers and all(t["resources"].get("worker_node") == 1 for t in workers)
