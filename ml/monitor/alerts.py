"""The drift alert: its JSON next to the report, its event payload, and an Apprise notification.
Apprise URLs carry credentials: they are passed in, never logged or stored."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ml.monitor.drift import to_json

DRIFT_EVENT = "skinflow.drift.detected"


def batch_resource_id(batch_source: str, dataset_version: str | None = None) -> str:
    """The Prefect resource id of a batch: ``skinflow.batch.<version or source>``."""
    return f"skinflow.batch.{dataset_version or batch_source}"


def alert_payload(summary: dict[str, Any], links: dict[str, str | None]) -> dict[str, Any]:
    """What the alert JSON, the event payload and the notification carry: verdict, reasons, the
    batch location, top drifted features, BBSE priors, links (report, MLflow run)."""
    bbse = summary["label_shift"].get("bbse") or {}
    return {
        "event": DRIFT_EVENT,
        "verdict": summary["verdict"],
        "reasons": summary["reasons"],
        "batch": summary.get("batch"),
        "batch_images": summary["n_batch"],
        "reference": summary.get("reference"),
        "model_uri": summary.get("model_uri"),
        "drifted_share": summary["covariate"]["drifted_share"],
        "top_drifted": summary["top_drifted"],
        "embedding": {k: summary["embedding"][k] for k in ("model_auc", "mmd", "drifted")},
        "priors": bbse.get("priors"),
        "expected_accuracy": bbse.get("expected_accuracy"),
        "out_of_map": summary.get("inputs", {}).get("out_of_map"),
        "links": {k: v for k, v in links.items() if v},
    }


def write_alert(payload: dict[str, Any], report_dir: str | Path) -> Path:
    """``alert.json`` beside the report."""
    path = Path(report_dir) / "alert.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_json(payload))
    return path


def notification_text(payload: dict[str, Any]) -> tuple[str, str]:
    """``(title, body)`` of the notification."""
    title = f"skinflow drift: {payload['verdict']} on {payload['batch']}"
    lines = [*payload["reasons"], f"top drifted: {', '.join(payload['top_drifted']) or 'none'}"]
    if payload.get("priors"):
        lines.append("BBSE priors: " + ", ".join(f"{k} {v:.2f}" for k, v in payload["priors"].items()))
    lines += [f"{k}: {v}" for k, v in payload["links"].items()]
    return title, "\n".join(lines)


def notify(url: str, payload: dict[str, Any]) -> bool:
    """Send the alert through Apprise to ``url``; True when delivered. The URL is not logged."""
    import apprise

    sender = apprise.Apprise()
    if not sender.add(url):
        raise ValueError(
            "the configured Apprise URL is not one Apprise understands (URL not shown: it may hold credentials)"
        )
    title, body = notification_text(payload)
    return bool(sender.notify(title=title, body=body))


def payload_json(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` as plain JSON types (numpy scalars converted): what an event may carry."""
    return json.loads(to_json(payload))
