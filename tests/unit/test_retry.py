"""tasks.common.is_transient / transient_only: which failures the I/O retry policy retries."""

from __future__ import annotations

import urllib.error

import botocore.exceptions
import pytest
import requests
import urllib3
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INVALID_PARAMETER_VALUE,
    REQUEST_LIMIT_EXCEEDED,
    RESOURCE_DOES_NOT_EXIST,
    TEMPORARILY_UNAVAILABLE,
)
from prefect.states import Failed

from ml.storage import EndpointUnreachableError
from ml.tracking.runs import ServiceUnavailableError
from tasks.common import IO_RETRIES, IO_RETRY, IO_RETRY_DELAYS, is_transient, transient_only


def _caused_by(outer: Exception, inner: Exception) -> Exception:
    try:
        raise outer from inner
    except Exception as exc:
        return exc


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError("refused"),
        TimeoutError("timed out"),
        urllib.error.URLError("no route"),
        requests.exceptions.ConnectionError("reset"),
        requests.exceptions.ReadTimeout("slow"),
        urllib3.exceptions.MaxRetryError(None, "/api", "too many"),
        botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:9"),
        ServiceUnavailableError("MLflow tracking server at http://x is unreachable"),
        EndpointUnreachableError("s3 endpoint"),
        MlflowException("busy", error_code=TEMPORARILY_UNAVAILABLE),
        MlflowException("slow down", error_code=REQUEST_LIMIT_EXCEEDED),
        MlflowException("API request to http://x failed with exception HTTPConnectionPool: Max retries exceeded"),
        _caused_by(RuntimeError("upload failed"), ConnectionResetError("peer")),
    ],
)
def test_network_and_service_errors_are_transient(exc: Exception) -> None:
    assert is_transient(exc)
    assert transient_only(None, None, Failed(data=exc))


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("champion v1 and challenger v2 have different classes"),
        KeyError("arch"),
        FileNotFoundError("weights.pt"),
        TypeError("bad call"),
        MlflowException("no such version", error_code=RESOURCE_DOES_NOT_EXIST),
        MlflowException("bad value", error_code=INVALID_PARAMETER_VALUE),
    ],
)
def test_other_errors_are_not(exc: Exception) -> None:
    assert not is_transient(exc)
    assert not transient_only(None, None, Failed(data=exc))


def test_a_failed_state_without_an_exception_is_not_retried() -> None:
    assert not transient_only(None, None, Failed(message="no exception"))


def test_the_io_retry_policy_keeps_the_existing_constants() -> None:
    assert IO_RETRY == {
        "retries": IO_RETRIES,
        "retry_delay_seconds": IO_RETRY_DELAYS,
        "retry_condition_fn": transient_only,
    }


def test_the_retry_delays_come_from_the_settings_and_their_count_is_the_retries(monkeypatch) -> None:
    import subprocess
    import sys

    from ml.settings import Settings

    monkeypatch.setenv("SKINFLOW_IO_RETRY_DELAYS", "[0.5, 3]")
    assert Settings().io_retry_delays == [0.5, 3.0]
    monkeypatch.setenv("SKINFLOW_IO_RETRY_DELAYS", "[-1]")
    with pytest.raises(ValueError, match="none negative"):
        Settings()
    monkeypatch.setenv("SKINFLOW_IO_RETRY_DELAYS", "[1, 4]")
    shown = subprocess.run(
        [sys.executable, "-c", "from tasks.common import IO_RETRY as r; print(r['retries'], r['retry_delay_seconds'])"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert shown.stdout.split("\n")[0] == "2 [1.0, 4.0]"
