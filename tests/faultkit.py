"""What the fault tests share: a real ``mlflow server`` that can be stopped and started again on
the same port and store, and the fault proxy process (tests/fault_proxy.py) in front of a server."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from tests.conftest import VENV_BIN, Service, free_port

REPO = Path(__file__).resolve().parents[1]


class MlflowServer:
    """``mlflow server`` on a sqlite store under ``root`` with artifacts served by the server
    (``--serve-artifacts``, stored under ``root/artifacts``), on a fixed free port so that a
    restart (``stop()`` then ``start()``) comes back at the same URL with the same data."""

    def __init__(self, root: Path, port: int | None = None):
        self.root, self.port = Path(root), port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.svc: Service | None = None

    def start(self, timeout: float = 300) -> MlflowServer:
        self.root.mkdir(parents=True, exist_ok=True)
        self.svc = Service(
            f"mlflow-{self.port}",
            [
                str(VENV_BIN / "mlflow"),
                "server",
                "--backend-store-uri",
                f"sqlite:///{self.root}/mlflow.db",
                "--artifacts-destination",
                str(self.root / "artifacts"),
                "--serve-artifacts",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            f"{self.url}/health",
            self.root,
            timeout=timeout,
        )
        return self

    def stop(self) -> None:
        if self.svc is not None:
            self.svc.close()
            self.svc = None


class FaultProxy:
    """tests/fault_proxy.py as a process in front of ``upstream``; ``requests()`` reads its log."""

    def __init__(
        self,
        upstream: str,
        log_dir: Path,
        fail_path: str | None = None,
        fail_body: str = "",
        after_path: str | None = None,
        status: int = 503,
        times: int = 1,
        port: int | None = None,
        health: str = "/health",
        forward_first: bool = False,
    ):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(log_dir) / f"proxy-{self.port}.jsonl"
        cmd = [
            sys.executable,
            str(REPO / "tests" / "fault_proxy.py"),
            "--port",
            str(self.port),
            "--upstream",
            upstream,
            "--fail-body",
            fail_body,
            "--status",
            str(status),
            "--times",
            str(times),
            "--log",
            str(self.log),
        ]
        if fail_path:
            cmd += ["--fail-path", fail_path]
        if after_path:
            cmd += ["--after-path", after_path]
        if forward_first:
            cmd.append("--forward-first")
        self.svc = Service(f"proxy-{self.port}", cmd, f"{self.url}{health}", Path(log_dir), timeout=30)

    def requests(self) -> list[dict]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]

    def kill(self) -> None:
        """SIGKILL the proxy: its address stops answering at once (connections refused)."""
        os.killpg(self.svc.proc.pid, signal.SIGKILL)
        self.svc.proc.wait(10)

    def close(self) -> None:
        self.svc.close()


# a promotion policy for tiny test splits (few held-out images, a short bootstrap)
SMALL_POLICY = (
    "margin: 0.03\nrecall_floor: 0.0\nalpha: 0.05\nn_boot: 200\nci: 0.95\nseed: 0\n"
    "superiority_level: 0.95\nmin_improvement: 0.0\nmax_ece: null\nrecall_floor_confidence: 0.95\nmax_group_loss: null\nmin_group_support: 30\nmin_disjoint_heldout: 5\n"
)


def retrain_command(
    data: Path,
    root: Path,
    server_url: str,
    prefect_api: str,
    model: str,
    epochs: int,
) -> tuple[list[str], dict[str, str]]:
    """``skinflow retrain`` without tuning or validation on ``data`` (32 px, SGD at a fixed LR,
    a 30% test split, :data:`SMALL_POLICY`) against a real MLflow server: ``(argv, env)``;
    add ``--out``."""
    policy = root / "promotion.yaml"
    policy.write_text(SMALL_POLICY)
    env = {
        **os.environ,
        "SKINFLOW_DATA_ROOT": str(root / "data"),
        "PREFECT_API_URL": prefect_api,
        "MLFLOW_TRACKING_URI": server_url,
        "SKINFLOW_REGISTERED_MODEL": model,
        "OMP_NUM_THREADS": "1",
    }
    cmd = [
        str(VENV_BIN / "skinflow"),
        "retrain",
        "--data",
        str(data),
        "--no-tune",
        "--no-validate",
        "--schedule",
        "sgd",
        "--lr",
        "0.01",
        "--epochs",
        str(epochs),
        "--size",
        "32",
        "--test-frac",
        "0.3",
        "--policy",
        str(policy),
    ]
    return cmd, env
