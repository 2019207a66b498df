"""validate: manifest -> features -> Great Expectations suites -> Data Docs (+ MLflow)."""

from __future__ import annotations

from pathlib import Path

from mlflow.exceptions import MlflowException
from prefect import flow, get_run_logger

from flows.naming import mlflow_tags, run_namer, tagged
from ml.data.config import DataConfig
from ml.project import with_project
from ml.storage import StorageError
from ml.tracking.runs import ServiceUnavailableError, set_run_tags
from tasks.data import build_manifest
from tasks.label_issues import apply_label_decisions
from tasks.mlflow_tasks import log_validation
from tasks.validation import compute_features, quarantine_files, run_expectations, store_data_docs


class ValidationFailed(RuntimeError):
    """Critical expectations failed; the message names them."""


@flow(name="validate", flow_run_name=run_namer("validate"))
def validate_flow(
    data: DataConfig = DataConfig(),
    policy: str | None = None,
    out_dir: str = "outputs/validate",
    fail_on_critical: bool = True,
) -> dict:
    """Validate one dataset version (``data.source`` through ``data.class_map``). Returns the
    report as a dict; raises on critical failures when ``fail_on_critical`` (the CLI prints the
    table and sets the exit code instead)."""
    with tagged("validate"):
        (data,) = with_project(data)  # the project file under what was given
        manifest = build_manifest(data.source, data.class_map, allow_outside_root=data.allow_outside_root)
        if data.decisions:  # a person's label-review decisions: validate the version they make
            manifest, _, _ = apply_label_decisions(manifest, data.decisions)
        return validate_manifest(manifest, data.source, policy, out_dir, fail_on_critical)


def validate_manifest(manifest, source: str, policy: str | None, out_dir: str, fail_on_critical: bool) -> dict:
    """The validation of a built manifest: what ``validate_flow`` runs, and what the retrain
    flow calls on the manifest it trains on. When the policy quarantines a finding, its files are
    set aside into a new dataset version (``quarantine``: its manifest, the list, the parent
    version) and the files left are validated again: the report is the new version's."""
    logger = get_run_logger()
    features = compute_features(manifest)
    docs_dir = Path(out_dir) / manifest.version / "data_docs"
    # the classes the data should have: the class map's promise, not only the folders found
    report = run_expectations(features, manifest.expected_classes, policy, str(docs_dir))
    held = quarantine_files(manifest, features, report, policy)  # None: the policy sets nothing aside
    not_written = [report.data_docs_error] if report.data_docs_error else []
    if held is not None:  # the parent's page stays beside the new version's, which names every file set aside
        _summary_page(report, docs_dir, source, manifest.version, not_written, manifest.notes)
        manifest = held.manifest  # set_aside keeps the parent's notes
        docs_dir = Path(out_dir) / manifest.version / "data_docs"
        report = run_expectations(held.features, held.expected_classes, policy, str(docs_dir), held)
        not_written += [report.data_docs_error] if report.data_docs_error else []
    summary_html = _summary_page(report, docs_dir, source, manifest.version, not_written, manifest.notes)
    full = report.to_dict()
    out = {
        "dataset_version": manifest.version,
        "parent_dataset_version": held.parent_version if held is not None else None,
        "quarantine": held.summary() if held is not None else None,
        "summary_html": str(summary_html) if summary_html else None,
        "passed": report.passed,
        "critical_failures": [f"{r.suite}:{r.check}" for r in report.critical_failures],
        "warnings": [f"{r.suite}:{r.check}" for r in report.warnings],
        "results": full["results"],
        "bad_files": full["bad_files"],
        "duplicate_groups": full["duplicate_groups"],
        "confounders_by_class": full["confounders_by_class"],
        "data_docs": str(report.data_docs_index) if report.data_docs_index else None,
    }
    from prefect.runtime import flow_run

    # the findings stand whether or not they can be recorded: pages a full or read-only disk could
    # not take, and a store or tracking server that is down (after the tasks' retries), are reported
    # beside them, not instead of them
    out["not_written"], out["not_recorded"] = not_written, []
    written = docs_dir if report.data_docs_index is not None else None  # this run's pages, not an older site
    out["data_docs_uri"] = None
    try:
        if written is not None:
            out["data_docs_uri"] = store_data_docs(str(written), manifest.version, flow_run.get_id() or "local")
    except StorageError as exc:
        out["not_recorded"] = [f"Data Docs not stored: {exc}"]
    try:
        mlflow_run_id = log_validation(out, written, source)
    except ServiceUnavailableError as exc:
        out["not_recorded"].append(f"no skinflow-validate run in MLflow: {exc}")
    else:  # log_validation opens the run itself: the flow run it belongs to is tagged here
        try:
            set_run_tags(mlflow_run_id, mlflow_tags())
        except MlflowException as exc:
            out["not_recorded"].append(f"skinflow-validate run {mlflow_run_id} not tagged with its flow run: {exc}")
    for line in out["not_written"]:
        logger.warning("report pages not written: %s", line)
    for line in out["not_recorded"]:
        logger.warning("%s (reports stay in %s)", line, docs_dir.parent)
    for w in out["warnings"]:
        logger.warning("validation warning: %s", w)
    if not report.passed and fail_on_critical:
        from ml.quality.quarantine import small_class_hint

        raise ValidationFailed(
            f"dataset {manifest.version} failed critical expectations: "
            + ", ".join(out["critical_failures"])
            + (f" (after quarantine: {held.line()})" if held is not None else "")
            + (small_class_hint(out["critical_failures"], held.files) if held is not None else "")
        )
    return out


def _summary_page(
    report, docs_dir: Path, source: str, version: str, not_written: list[str], notes: list[str]
) -> Path | None:
    """``summary.html`` beside the Data Docs of ``version``, written atomically; None (and the
    reason in ``not_written``) when the disk cannot take it."""
    from ml.storage import atomic_write

    page = docs_dir.parent / "summary.html"
    try:
        page.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(page, report.to_html(f"Validation of {source} (dataset {version})", notes).encode())
    except (StorageError, OSError) as exc:
        not_written.append(str(exc))
        return None
    return page
