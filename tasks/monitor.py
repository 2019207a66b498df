"""Prefect tasks of the monitor flow: thin wrappers over ml/monitor (retries only on I/O)."""

from __future__ import annotations

import os
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from ml.monitor.config import APPRISE_ENV
from ml.settings import get_settings
from tasks.common import IO_RETRY


@task(name="load-monitored-model", **IO_RETRY, cache_policy=NO_CACHE)
def load_model(model_uri: str):
    """The real module, classes and preprocessing of the model to monitor (MLflow)."""
    from ml.monitor.model import load_monitored_model
    from ml.tracking.runs import check_mlflow_available, configure_mlflow

    uri = configure_mlflow(get_settings().mlflow_tracking_uri)
    if uri.startswith("http"):
        check_mlflow_available(uri)
    return load_monitored_model(model_uri)


@task(name="load-batch", **IO_RETRY, cache_policy=NO_CACHE)
def load_batch(
    source: str, class_map: str | None, classes: list[str], allow_outside_root: bool = False, size: int | None = None
):
    """The batch and, with the model's input ``size``, what the monitor needs of each image (its
    descriptors and model input: :class:`ml.monitor.describe.DecodedImages`, else None) from the one
    decode that checks it."""
    from ml.monitor.batch import load_batch as load

    images = None
    if size is not None:
        from ml.monitor.describe import DecodedImages

        images = DecodedImages(size)
    batch = load(source, class_map, classes, allow_outside_root=allow_outside_root, on_image=images)
    if batch.records.empty:
        raise ValueError(f"batch {batch.source} has no usable image: " + "; ".join(batch.report_lines()[1:]))
    logger = get_run_logger()
    for line in batch.report_lines():
        logger.info("%s", line)
    return batch, images


@task(name="load-reference", **IO_RETRY, cache_policy=NO_CACHE)
def load_reference(model, source: str | None, version: str | None, class_map: str | None, max_images: int, seed: int):
    from ml.monitor.reference import load_reference as load

    reference = load(model, source, version, class_map, max_images, seed)
    for note in reference.notes:
        get_run_logger().warning("%s", note)
    return reference


@task(name="describe-images", cache_policy=NO_CACHE)
def describe_images(records, model, what: str, images=None):
    """Descriptors, embeddings and predictions of ``records`` (a progress bar on the terminal);
    ``images`` holds those already decoded (:func:`ml.monitor.describe.describe`)."""
    from tqdm import tqdm

    from ml.monitor.describe import describe

    with tqdm(total=len(records), desc=f"describe {what}", unit="img", leave=False) as bar:
        return describe(records, model, progress=lambda done, _total: bar.update(done - bar.n), images=images)


@task(name="estimate-label-shift", cache_policy=NO_CACHE)
def estimate_label_shift(validation, reference, batch, policy):
    """BBSE priors of the batch (None without the model's validation images)."""
    from ml.monitor.label_shift import estimate_label_shift as estimate

    return estimate(validation, reference, batch, n_boot=policy.n_boot, level=policy.prior_level)


@task(name="measure-drift", cache_policy=NO_CACHE)
def measure_drift(reference, batch, policy, label_estimate, seed: int, metadata: dict | None = None):
    from ml.monitor.drift import measure_drift as measure

    return measure(reference, batch, policy, label_estimate, render=True, seed=seed, metadata=metadata)


@task(name="add-to-evidently-workspace", cache_policy=NO_CACHE)
def add_to_workspace(snapshot, model_uri: str, run_name: str, workspace: str | None = None) -> dict[str, str]:
    """The snapshot into the Evidently workspace (default ``<data_root>/evidently``), project
    ``skinflow-monitor/<registered model>``: ``evidently ui --workspace <path>`` shows the runs."""
    from ml.monitor.workspace import PROJECT, add_snapshot, default_workspace, project_name

    path = workspace or str(default_workspace(get_settings()))
    entry = add_snapshot(
        snapshot,
        path,
        project_name(model_uri),
        name=run_name,
        description=f"{PROJECT}: drift of monitored batches against the model's reference, one snapshot per run",
    )
    get_run_logger().info(
        "Evidently workspace: %s (project %s; evidently ui --workspace %s)", path, entry["project"], path
    )
    return entry


@task(name="write-reports", cache_policy=NO_CACHE)
def write_reports(snapshot, summary: dict, report_dir: str) -> dict[str, str]:
    """``index.html`` (skinflow's verdict page, showing the report below the verdict),
    ``drift_report.html`` (Evidently's report as it writes it) and ``drift_summary.json``."""
    from ml.monitor.drift import to_json
    from ml.monitor.report_page import write_report_pages

    folder = Path(report_dir)
    pages = write_report_pages(snapshot, summary, folder)
    (folder / "drift_summary.json").write_text(to_json(summary))
    return {"page": str(pages["page"]), "html": str(pages["report"]), "json": str(folder / "drift_summary.json")}


@task(name="store-reports", **IO_RETRY, cache_policy=NO_CACHE)
def store_reports(report_dir: str, key: str) -> str | None:
    """Copy the reports to ``reports/monitor/<key>/`` on S3 when the storage root is S3."""
    from ml.storage import Storage, is_s3

    settings = get_settings()
    if not is_s3(settings.root_uri):
        return None
    uri = settings.uri("reports", "monitor", key)
    Storage(settings).sync_dir_up(report_dir, uri)
    return uri


@task(name="log-monitor-run", **IO_RETRY, cache_policy=NO_CACHE)
def log_monitor_run(run_id: str, summary: dict, files: dict[str, str], config: dict) -> None:
    """Params, metrics, verdict tag and the report files (``reports/``) of the skinflow-monitor run."""
    from ml.monitor.drift import summary_metrics
    from ml.settings import redact
    from ml.tracking.runs import flatten_config, log_run_artifact, log_run_metrics, log_run_params, set_run_tags

    log_run_params(run_id, flatten_config(redact(config)), max_chars=500)
    log_run_metrics(run_id, summary_metrics(summary))
    set_run_tags(run_id, {"drift_verdict": summary["verdict"]})
    for path in files.values():
        log_run_artifact(run_id, path, artifact_path="reports")


def prefect_server_configured() -> bool:
    """Whether flows talk to a Prefect server (events act there) rather than the in-process
    ephemeral API (``emit_event`` does nothing there)."""
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


@task(name="emit-drift-event", cache_policy=NO_CACHE)
def emit_drift_event(payload: dict, resource_id: str, run_id: str | None) -> str:
    """``skinflow.drift.detected`` on the batch, related to the MLflow run; returns what happened."""
    from prefect.events import emit_event

    from ml.monitor.alerts import DRIFT_EVENT, payload_json

    if not prefect_server_configured():
        return "not sent: the Prefect API is the in-process ephemeral one (no PREFECT_API_URL), where events do nothing"
    related = [{"prefect.resource.id": f"mlflow.run.{run_id}", "prefect.resource.role": "mlflow-run"}] if run_id else []
    event = emit_event(
        DRIFT_EVENT,
        resource={"prefect.resource.id": resource_id, "prefect.resource.name": str(payload.get("batch"))},
        related=related,
        payload=payload_json(payload),
    )
    return f"sent ({event.id})" if event is not None else "not sent (events disabled)"


def apprise_url(secret_block: str | None) -> str | None:
    """The Apprise URL: the named Prefect Secret block, else the environment variable."""
    if secret_block:
        from prefect.blocks.system import Secret

        return Secret.load(secret_block).get()
    return os.environ.get(APPRISE_ENV) or None


@task(name="notify-drift", **IO_RETRY, cache_policy=NO_CACHE)
def notify_drift(payload: dict, secret_block: str | None) -> str:
    """An Apprise notification when a URL is configured (never logged)."""
    from ml.monitor.alerts import notify

    url = apprise_url(secret_block)
    if not url:
        return f"not sent: no Apprise URL configured ({APPRISE_ENV} or a Secret block)"
    return "sent" if notify(url, payload) else "failed: Apprise could not deliver it"
