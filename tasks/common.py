"""What every task shares: retry policy for I/O and Prefect artifacts."""

from __future__ import annotations

import json
import socket
import urllib.error
from typing import Any

from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from ml.settings import get_settings

IO_RETRY_DELAYS = get_settings().io_retry_delays  # seconds; backoff for S3 and MLflow calls
IO_RETRIES = len(IO_RETRY_DELAYS)


def _network_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "the network or a service did not answer" (the libraries that
    raise them are imported only to name their types)."""
    import botocore.exceptions as botocore_errors
    import requests.exceptions as requests_errors
    import urllib3.exceptions as urllib3_errors

    from ml.storage import EndpointUnreachableError
    from ml.tracking.runs import ServiceUnavailableError

    return (
        ConnectionError,
        TimeoutError,
        socket.gaierror,
        urllib.error.URLError,  # OSError family
        requests_errors.ConnectionError,
        requests_errors.Timeout,
        urllib3_errors.MaxRetryError,
        urllib3_errors.TimeoutError,
        urllib3_errors.ProtocolError,
        botocore_errors.ConnectionError,
        botocore_errors.ReadTimeoutError,  # EndpointConnectionError, ...
        ServiceUnavailableError,
        EndpointUnreachableError,
    )


def _transient_mlflow(exc: BaseException) -> bool:
    """An MLflow error with a 5xx or 429 status (what a server that is down, overloaded or
    restarting answers), or one that says it is temporarily unavailable."""
    from mlflow.exceptions import MlflowException

    if not isinstance(exc, MlflowException):
        return False
    return (
        exc.get_http_status_code() >= 500
        or exc.get_http_status_code() == 429
        or "temporarily unavailable" in str(exc).lower()
    )


def is_transient(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is a network or service error that
    a retry can get past. A ValueError, a missing file, a bad configuration are not."""
    network = _network_errors()
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, network) or _transient_mlflow(exc):
            return True
        exc = exc.__cause__
    return False


def _exception_of(state: Any) -> BaseException | None:
    """The exception behind a Failed Prefect state (None when there is none)."""
    data = getattr(state, "data", None)
    if isinstance(data, BaseException):
        return data
    try:
        result = state.result(raise_on_failure=False)
    except Exception:
        return None
    return result if isinstance(result, BaseException) else None


def transient_only(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn`` (``(task, task_run, state) -> bool``, Prefect 3): retry only
    when the failure is transient (:func:`is_transient`); anything else fails on its first attempt."""
    return is_transient(_exception_of(state))


# the retry policy of a task that talks to S3 or MLflow: ``@task(..., **IO_RETRY)``
IO_RETRY: dict[str, Any] = dict(
    retries=IO_RETRIES, retry_delay_seconds=IO_RETRY_DELAYS, retry_condition_fn=transient_only
)


def _artifact_key(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def _cell(v: Any) -> Any:
    """A JSON-safe table cell (numpy scalars to Python, containers to JSON text)."""
    if hasattr(v, "item") and callable(v.item) and getattr(v, "ndim", 1) == 0:
        v = v.item()
    if isinstance(v, float):
        return round(v, 4)
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, default=lambda o: o.item() if hasattr(o, "item") else str(o))
    return v


def publish_table(key: str, rows: list[dict] | dict, description: str = "") -> None:
    """A Prefect table artifact (a dict becomes a two-column key/value table)."""
    if isinstance(rows, dict):
        rows = [{"key": k, "value": _cell(v)} for k, v in rows.items()]
    else:
        rows = [{k: _cell(v) for k, v in r.items()} for r in rows]
    create_table_artifact(key=_artifact_key(key), table=rows, description=description)


def publish_link(key: str, url: str, text: str, description: str = "") -> None:
    """A Prefect link artifact (e.g. a flow's MLflow run)."""
    create_link_artifact(key=_artifact_key(key), link=url, link_text=text, description=description)


def publish_markdown(key: str, markdown: str, description: str = "") -> None:
    create_markdown_artifact(key=_artifact_key(key), markdown=markdown, description=description)


def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return "_(none)_"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(_cell(r.get(c, ""))) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def run_logger():
    """The Prefect run logger, or the ``skinflow`` logger when a task's function is called
    outside a flow or task run (``task.fn(...)``, as tests and notebooks do)."""
    import logging

    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("skinflow")
