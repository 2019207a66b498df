"""What every task shares: retry policy for I/O and Prefect artifacts."""

from __future__ import annotations

import json
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

IO_RETRIES = 3
IO_RETRY_DELAYS = [2, 5, 10]  # seconds; backoff for S3 and MLflow calls


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


def publish_markdown(key: str, markdown: str, description: str = "") -> None:
    create_markdown_artifact(key=_artifact_key(key), markdown=markdown, description=description)


def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return "_(none)_"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(_cell(r.get(c, ""))) for c in cols) + " |" for r in rows]
    return "\n".join(lines)
