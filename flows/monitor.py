"""monitor: a new batch against the model's reference -> descriptors, embeddings, predictions ->
Evidently report and verdict -> label shift (BBSE) -> the snapshot into the Evidently workspace
-> reports (verdict page + Evidently's report) and MLflow (skinflow-monitor) -> on drift: alert
JSON, Prefect event ``skinflow.drift.detected`` (the retrain trigger listens), Apprise."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from flows.naming import mlflow_tags, run_namer, tagged
from ml.monitor.config import MonitorConfig
from ml.project import with_project
from ml.tracking.runs import run_name
from tasks.common import markdown_table, publish_markdown
from tasks.mlflow_tasks import tracked_run
from tasks.monitor import (
    add_to_workspace,
    describe_images,
    emit_drift_event,
    estimate_label_shift,
    load_batch,
    load_model,
    load_reference,
    log_monitor_run,
    measure_drift,
    notify_drift,
    prefect_server_configured,
    store_reports,
    write_reports,
)


@flow(name="monitor", flow_run_name=run_namer("monitor"))
def monitor_flow(monitor: MonitorConfig = MonitorConfig()) -> dict:
    """Compare one batch with the monitored model's reference; returns the JSON summary (with
    ``verdict``, ``report_page`` (the verdict page), ``report_html`` (Evidently's report),
    ``evidently`` (workspace, project and snapshot id), ``mlflow_run_id``, ``event`` and
    ``notification``)."""
    with tagged("monitor"):
        from prefect.runtime import flow_run

        from ml.monitor.alerts import alert_payload, batch_resource_id, write_alert
        from ml.monitor.describe import tone_shares
        from ml.monitor.policy import DriftPolicy

        (monitor,) = with_project(monitor)  # the project file under what was given
        if not monitor.batch:
            raise ValueError(
                "no batch to check: name one (skinflow drift BATCH) or set monitor.batch in the project file"
            )
        model_uri = monitor.monitored_uri()
        logger = get_run_logger()
        policy = DriftPolicy.load(monitor.policy)
        model = load_model(model_uri)
        batch, images = load_batch(
            monitor.batch, monitor.class_map, model.classes, monitor.allow_outside_root, model.size
        )
        reference = load_reference(
            model,
            monitor.reference,
            monitor.reference_version,
            monitor.reference_class_map,
            monitor.max_reference,
            monitor.seed,
        )
        ref = describe_images(reference.records, model, "reference")
        val = describe_images(reference.validation, model, "validation") if len(reference.validation) else None
        cur = describe_images(batch.records, model, "batch", images)  # no batch image decoded again
        label_estimate = estimate_label_shift(val, ref, cur, policy)
        key = flow_run.get_id() or "local"
        metadata = {"batch": batch.source, "model_uri": model_uri, "prefect_flow_run_id": key}
        summary, snapshot = measure_drift(ref, cur, policy, label_estimate, monitor.seed, metadata=metadata)
        summary.update(
            batch=batch.source,
            model_uri=model_uri,
            inputs=batch.summary(),
            skin_tone_shares=tone_shares(ref, cur),
            reference={
                "source": reference.source,
                "kind": reference.kind,
                "dataset_version": reference.dataset_version,
                "images": len(ref),
                "validation_images": 0 if val is None else len(val),
                "notes": reference.notes,
            },
        )
        summary["evidently"] = add_to_workspace(
            snapshot, model_uri, f"{Path(batch.source).name}: {summary['verdict']}", monitor.workspace
        )
        report_dir = str(Path(monitor.out_dir) / key)
        with tracked_run(
            "skinflow-monitor",
            run_name("monitor", verdict=summary["verdict"], batch=Path(batch.source).name),
            tags=mlflow_tags(drift_verdict=summary["verdict"]),
        ) as (run_id, experiment_id):
            summary.update(
                mlflow_run_id=run_id, mlflow_experiment_id=experiment_id, mlflow_run_url=_run_url(experiment_id, run_id)
            )
            files = write_reports(snapshot, summary, report_dir)
            log_monitor_run(run_id, summary, files, monitor.model_dump())
        summary.update(report_page=files["page"], report_html=files["html"], report_json=files["json"])
        summary["report_uri"] = store_reports(report_dir, key)
        summary["prefect_api"] = "server" if prefect_server_configured() else "ephemeral"
        summary["event"] = summary["notification"] = "not sent: no drift"
        if summary["verdict"] == "drift":
            links = {"report": summary["report_uri"] or files["page"], "mlflow_run": summary["mlflow_run_url"]}
            payload = alert_payload(summary, links)
            summary["alert_json"] = str(write_alert(payload, report_dir))
            summary["event"] = emit_drift_event(payload, batch_resource_id(batch.source), run_id)
            summary["notification"] = notify_drift(payload, monitor.apprise_secret)
            logger.warning("drift on %s: %s", batch.source, "; ".join(summary["reasons"]))
        publish_markdown("monitor-summary", summary_markdown(summary))
        return summary


def summary_markdown(summary: dict) -> str:
    """The Prefect artifact: verdict, reasons, top drifted features, priors, links."""
    bbse = summary["label_shift"].get("bbse") or {}
    ev = summary.get("evidently") or {}
    rows = [
        {"column": r["column"], "method": r["method"], "score": r["score"], "drifted": r["drifted"]}
        for r in summary["columns"]
        if r["column"] in summary["top_drifted"]
    ]
    priors = [
        {
            "class": c,
            "reference": bbse["reference_priors"][c],
            "estimate": p,
            "low": bbse["interval_low"][c],
            "high": bbse["interval_high"][c],
        }
        for c, p in bbse.get("priors", {}).items()
    ]
    lines = [
        f"## Drift verdict: **{summary['verdict']}**",
        "",
        f"Batch `{summary['batch']}` ({summary['n_batch']} images) vs {summary['n_reference']} reference images.",
        "",
        *[f"- {r}" for r in summary["reasons"] or ["no rule fired"]],
        "",
        "### Top drifted features",
        markdown_table(rows),
        "",
        "### Class priors (BBSE)",
        markdown_table(priors) if priors else "_(no validation images: skipped)_",
        "",
        f"Report: `{summary.get('report_uri') or summary.get('report_page')}`; "
        f"[MLflow run {summary.get('mlflow_run_id')}]({summary.get('mlflow_run_url')}) (skinflow-monitor).",
        f"Evidently workspace: `{ev.get('workspace')}`, project `{ev.get('project')}` "
        f"(`evidently ui --workspace {ev.get('workspace')}`)."
        if ev
        else "",
    ]
    return "\n".join(lines)


def _run_url(experiment_id: str, run_id: str) -> str:
    """The run's page in the MLflow UI (the tracking server, else where `mlflow ui` serves a local store)."""
    from ml.settings import get_settings, redact_text
    from ml.tracking.runs import MLFLOW_UI

    uri = get_settings().mlflow_tracking_uri
    ui = uri.rstrip("/") if uri.startswith("http") else MLFLOW_UI
    return redact_text(f"{ui}/#/experiments/{experiment_id}/runs/{run_id}")
