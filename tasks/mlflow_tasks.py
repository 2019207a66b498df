"""Prefect tasks around MLflow runs and the model registry (with retries on I/O).

The promotion gate's modules (``ml.eval.gate``, ``ml.tracking.models``, ``ml.train.recipes``: scipy,
torch, torchvision, matplotlib) are imported by the tasks that use them: flows that only open runs and
log to them (``validate``) do not load them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError

from ml.settings import get_settings, without_credentials
from ml.tracking import registry
from ml.tracking import runs as tracking_runs
from tasks.common import IO_RETRY, markdown_table, publish_link, publish_markdown

if TYPE_CHECKING:
    from ml.eval.gate import GateDecision, PromotionPolicy


@task(name="open-mlflow-run", **IO_RETRY, cache_policy=NO_CACHE)
def open_run(
    experiment: str, run_name: str, parent_run_id: str | None = None, tags: dict[str, str] | None = None
) -> tuple[str, str]:
    """Create an MLflow run (child of ``parent_run_id`` if given); returns (run_id, experiment_id)
    and logs the link to the experiment's runs in the MLflow UI. Fails with a message naming
    the tracking server when it is unreachable."""
    uri = tracking_runs.configure_mlflow(get_settings().mlflow_tracking_uri)
    if uri.startswith("http"):
        tracking_runs.check_mlflow_available(uri)
    exp = _experiment(experiment, uri)
    run_id = tracking_runs.create_run(exp.experiment_id, run_name, parent_run_id, tags)
    # links are shown and stored (a Prefect artifact): never with the server's credentials
    ui = without_credentials(uri) if uri.startswith("http") else tracking_runs.MLFLOW_UI
    try:
        get_run_logger().info("MLflow run %r: %s", run_name, tracking_runs.runs_page_url(exp.experiment_id, ui))
    except MissingContextError:  # called outside a flow (open_run.fn)
        return run_id, exp.experiment_id
    if parent_run_id is None:  # the flow's own run: its Prefect artifact links the MLflow run
        publish_link(
            f"{experiment}-mlflow-run",
            tracking_runs.run_page_url(exp.experiment_id, run_id, ui),
            f"MLflow run {run_name!r} ({experiment})",
            f"The MLflow run of this flow run: metrics, plots, model. Local store: `mlflow ui` serves {ui}.",
        )
    return run_id, exp.experiment_id


def _experiment(name: str, uri: str):
    """Get or create the experiment, tagged as model development so that the MLflow UI opens it
    on its runs (an existing untagged one gets the tag); with a local store its artifacts go
    under the data root (a server chooses its own artifact destination)."""
    location = None
    if not uri.startswith("http"):
        location = (get_settings().data_root / "mlartifacts").resolve().as_uri()
    return tracking_runs.ensure_experiment(name, artifact_location=location)


@task(name="close-mlflow-run", **IO_RETRY, cache_policy=NO_CACHE)
def close_run(run_id: str, status: str = "FINISHED") -> None:
    tracking_runs.terminate_run(run_id, status)


@contextmanager
def tracked_run(
    experiment: str,
    run_name: str,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    system_metrics: bool = False,
) -> Iterator[tuple[str, str]]:
    """An MLflow run around a block: yields ``(run_id, experiment_id)``; the run ends FINISHED,
    FAILED when the block raises, KILLED when it is interrupted (Ctrl-C), and the block's own
    exception is what propagates (a failure to close the run is only logged then).

    ``system_metrics``: the run samples CPU, memory, disk, network (and GPU) use while the block
    runs (:func:`ml.tracking.runs.system_metrics`, every 5 s): on for the runs that train, off
    for short bookkeeping runs, where it would only add a thread and store calls."""
    run_id, experiment_id = open_run(experiment, run_name, parent_run_id, tags)
    try:
        with tracking_runs.system_metrics(run_id) if system_metrics else nullcontext():
            yield run_id, experiment_id
    except BaseException as exc:
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        try:
            close_run(run_id, status)
        except Exception as close_error:
            get_run_logger().warning("could not mark MLflow run %s %s: %s", run_id, status, close_error)
        raise
    close_run(run_id)


RUN_FILE = "mlflow_run.json"  # in a checkpoint folder: the MLflow run that writes that checkpoint


@task(name="supersede-interrupted-run", **IO_RETRY, cache_policy=NO_CACHE)
def supersede_interrupted_run(checkpoint_dir: str, run_id: str) -> str | None:
    """Record ``run_id`` as the MLflow run of ``checkpoint_dir``; if an earlier run wrote that
    checkpoint and never ended (its process was killed, it is still RUNNING), it is marked KILLED
    and tagged ``superseded_by=run_id``, and ``run_id`` is tagged ``resumed_from_run``. Returns
    the superseded run's id (None when there is none). Safe to repeat."""
    import json

    from ml.storage import atomic_write

    folder = Path(checkpoint_dir)
    previous = None
    if (folder / RUN_FILE).is_file():
        previous = json.loads((folder / RUN_FILE).read_text()).get("run_id")
    client = MlflowClient()
    superseded = None
    if previous and previous != run_id:
        try:
            old = client.get_run(previous)
        except MlflowException as exc:
            if exc.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
                raise  # a service error: retried
            get_run_logger().warning("checkpoint %s names MLflow run %s, not in this store", folder, previous)
        else:
            if old.info.status == "RUNNING":
                tracking_runs.supersede_run(previous, run_id)
                superseded = previous
                get_run_logger().info("MLflow run %s (interrupted) is superseded by %s", previous, run_id)
    atomic_write(folder / RUN_FILE, json.dumps({"run_id": run_id}).encode())
    return superseded


@task(name="log-validation", **IO_RETRY, cache_policy=NO_CACHE)
def log_validation(report: dict, docs_dir: Path | None, source: str) -> str:
    """A skinflow-validate run with the results JSON and the GX Data Docs site."""
    run_id, _ = open_run.fn(
        "skinflow-validate",
        tracking_runs.run_name("validate", data=report["dataset_version"]),
        tags={"dataset_version": report["dataset_version"]},
    )
    tracking_runs.log_validation_report(run_id, report, docs_dir, source)
    tracking_runs.terminate_run(run_id)
    return run_id


@task(name="log-quarantine", **IO_RETRY, cache_policy=NO_CACHE)
def log_quarantine(run_id: str, quarantine: dict[str, Any]) -> None:
    """The files the validation quarantined (the validate report's ``quarantine``) on run ``run_id``:
    ``quarantine.csv``, param ``quarantined_files``, tags ``parent_dataset_version`` and ``quarantine``."""
    tracking_runs.log_quarantine(run_id, quarantine)


@task(name="register-model", **IO_RETRY, cache_policy=NO_CACHE)
def register_model(model_uri: str, tags: dict[str, Any]) -> str:
    """Register the logged model ``model_uri`` (``log_training_run(...)["model_uri"]``) as a new
    version and make it ``challenger``. If aliasing fails, the half-made version is deleted so
    that no partial version stays registered."""
    name = get_settings().registered_model
    version = registry.register_version(model_uri, name, tags={k: str(v) for k, v in tags.items()})
    try:
        registry.set_alias(name, "challenger", version)
    except Exception:
        registry.delete_version(name, version)
        raise
    return version


def _predictions(
    model_uri: str, images: np.ndarray, labels: np.ndarray, classes: list[str], recompute: bool = False
) -> tuple[np.ndarray, dict, str]:
    """A stored model's (calibrated) class probabilities on the held-out set: the ones its run
    stored for exactly this set (same digest) when there are any, else predicted again from its
    stored weights and trust. Returns ``(probs, meta, "stored" | "recomputed")``."""
    from ml.eval.gate import heldout_digest
    from ml.tracking import models as tracked_models
    from ml.train import recipes

    if not recompute:
        probs = tracked_models.load_predictions(model_uri, heldout_digest(images, labels, classes))
        if probs is not None:
            return probs, tracked_models.load_model_meta(model_uri), "stored"
    states, meta = tracked_models.load_model_states(model_uri)
    probs = recipes.predict_logged(
        meta["arch"], meta["classes"], states, meta["norm"], images, tta=meta.get("tta", False), trust=meta.get("trust")
    )  # as the run evaluated (and serves) it
    return probs, meta, "recomputed"


@task(name="promotion-gate", **IO_RETRY, cache_policy=NO_CACHE)
def promotion_gate(
    version: str,
    images: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    policy_path: str | None = None,
    recompute: bool = False,
    *,
    digests: Sequence[str],
) -> dict[str, Any]:
    """Compare challenger ``version`` with the current champion on the same held-out data;
    move ``champion`` only when :func:`ml.eval.gate.decide_on_heldout` says so. Logged and shown as an artifact.

    ``digests``: the SHA-256 of each held-out image (``ml.data.split.split_digests(manifest,
    "test")``). Images either model trained on (its run's ``reports/train_digests.json``) are left
    out; the result says how many (``heldout_overlap``, per model) and on how many images the
    models were compared (``evaluated_on``). With fewer than the policy's ``min_disjoint_heldout``
    the gate refuses: no alias moves, ``gate_decision`` is "refused".

    Each model's predictions are the ones its run stored for this exact held-out set (matched
    by digest), else they are predicted again from its stored weights (``recompute=True``
    always does that).

    Idempotent under retries: moving the alias and tagging the version are one step that a retry
    repeats whole. A retry that finds ``version`` already champion (an earlier attempt moved the
    alias, then failed) compares it again with the champion it replaced (tag
    ``gate_champion_before``, written before the alias moves) and reports it promoted."""
    from ml.eval.gate import PromotionPolicy

    logger = get_run_logger()
    settings = get_settings()
    name = settings.registered_model
    policy = PromotionPolicy.load(policy_path)
    if len(digests) != len(labels):
        raise ValueError(f"{len(digests)} held-out digests for {len(labels)} held-out images")
    challenger_uri = f"models:/{name}/{version}"
    challenger_pred, meta, challenger_source = _predictions(challenger_uri, images, labels, classes, recompute)
    with one_gate_at_a_time(name):  # read champion -> decide -> move the alias: no other gate in between
        out, decision, heldout = _gate_step(
            name,
            version,
            challenger_uri,
            challenger_pred,
            meta,
            challenger_source,
            images,
            labels,
            classes,
            policy,
            recompute,
            digests,
        )
    verdict = out["decision"]
    logger.info(
        "promotion gate: v%s %s on %d of %d held-out images (%s)",
        version,
        "PROMOTED" if decision.promote else f"{verdict}, stays challenger",
        heldout.evaluated_on,
        len(labels),
        decision.reason,
    )
    rows = [
        {"quantity": k, "value": v}
        for k, v in tracking_runs.flatten_config(
            {
                "evaluated_on": heldout.evaluated_on,
                "heldout_images": len(labels),
                "heldout_overlap": {m: "unknown" if n is None else n for m, n in heldout.overlap.items()},
                **decision.numbers,
                "predictions": out["predictions"],
            }
        ).items()
    ]
    publish_markdown(
        "retrain-gate",
        f"## Promotion gate: v{version} -> "
        f"{'champion' if decision.promote else 'stays challenger'}\n\n{decision.reason}\n\n"
        f"Evaluated on {heldout.evaluated_on} of {len(labels)} held-out images (those neither "
        f"model trained on).\n\n" + markdown_table(rows),
    )
    return out


def _gate_step(
    name: str,
    version: str,
    challenger_uri: str,
    challenger_pred: np.ndarray,
    meta: dict,
    challenger_source: str,
    images: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    policy: PromotionPolicy,
    recompute: bool,
    digests: Sequence[str],
):
    """What a gate does while it holds the lock: read the champion, compare, move the alias (one
    idempotent step). Returns ``(result, decision, heldout)``."""
    from ml.eval.gate import after_earlier_promotion, decide_on_heldout, disjoint_heldout

    current = registry.get_alias_version(name, "champion")
    already = current == str(version)
    champion = _champion_before(name, version) if already else current
    champion_pred, champion_source, trained = None, None, {"challenger": _trained(challenger_uri)}
    if champion is not None:
        champion_uri = f"models:/{name}/{champion}"
        champion_pred, champ_meta, champion_source = _predictions(champion_uri, images, labels, classes, recompute)
        if champ_meta["classes"] != meta["classes"]:
            raise ValueError(f"champion v{champion} and challenger v{version} have different classes")
        trained["champion"] = _trained(champion_uri)
    heldout = disjoint_heldout(digests, trained)
    groups = None
    if champion is not None:  # the skin-tone group rule compares two models
        from ml.quality.skin_tone import groups_of

        groups = groups_of(images)
    decision = decide_on_heldout(labels, challenger_pred, champion_pred, classes, policy, heldout, groups)
    if already:  # the alias moved in an earlier attempt: it stays
        decision = after_earlier_promotion(decision)
    _apply(name, version, decision, champion)
    out = {
        "version": version,
        "champion_before": champion,
        "promoted": decision.promote,
        "decision": decision.verdict,
        "reason": decision.reason,
        "numbers": decision.numbers,
        "heldout_overlap": heldout.overlap,
        "evaluated_on": heldout.evaluated_on,
        "heldout_images": len(labels),
        "predictions": {"challenger": challenger_source, "champion": champion_source},
    }
    return out, decision, heldout


GATE_LIMIT = "skinflow-promotion-gate"  # Prefect global concurrency limit (one slot) per registered model


@contextmanager
def one_gate_at_a_time(name: str, timeout_s: float = 900) -> Iterator[None]:
    """Hold the one slot of the Prefect global concurrency limit ``skinflow-promotion-gate-<name>``
    (created with limit 1 when missing): two retrains that finish together gate one after the
    other, the second against the champion the first left, so no promotion is lost. The slot is
    a lease on the Prefect server, so it serialises gates across processes and machines and is
    freed when its holder dies."""
    import re

    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists

    limit = f"{GATE_LIMIT}-{re.sub(r'[^A-Za-z0-9_.-]', '-', name)}"
    with get_client(sync_client=True) as client:
        try:
            client.upsert_global_concurrency_limit_by_name(limit, 1)
        except ObjectAlreadyExists:  # another gate created it just now
            pass
    with concurrency(limit, occupy=1, timeout_seconds=timeout_s, strict=True):
        yield


def _trained(model_uri: str) -> set[str] | None:
    """The model's training images (train + val digests); None (and a warning) when unrecorded."""
    from ml.tracking import models as tracked_models

    seen = tracked_models.load_training_digests(model_uri)
    if seen is None:
        get_run_logger().warning(
            "%s recorded no training images: the held-out set cannot be checked against them", model_uri
        )
    return seen


def _champion_before(name: str, version: str) -> str | None:
    """The champion that ``version`` replaced, as the gate recorded it before moving the alias
    (None: there was none, or the alias was set by hand)."""
    before = MlflowClient().get_model_version(name, version).tags.get("gate_champion_before")
    return None if before in (None, "none") else before


def _apply(name: str, version: str, decision: GateDecision, champion_before: str | None) -> None:
    """The gate's one write step, safe to repeat: record the champion being replaced, move the
    alias, then tag the decision (a retry after any of these writes redoes them all)."""
    if decision.promote:
        registry.tag_version(name, version, {"gate_champion_before": champion_before or "none"})
        registry.set_alias(name, "champion", version)
    registry.tag_version(name, version, {"gate_decision": decision.verdict, "gate_reason": decision.reason[:500]})
