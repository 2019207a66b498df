"""The promotion-gate task against a real MLflow store (sqlite) under Prefect's test harness, with
its Prefect retries: the held-out set is disjoint from both models' training images, the alias
move and its tags are one idempotent step, and only transient errors are retried."""

from __future__ import annotations

import asyncio
import hashlib
import uuid

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from ml.eval.gate import PromotionPolicy, decide, heldout_digest
from ml.settings import get_settings
from ml.tracking import models as tracked_models
from ml.tracking import registry
from ml.tracking.runs import configure_mlflow
from tasks.common import IO_RETRY
from tests.conftest import use_local_stores
from tests.faultkit import FaultProxy, MlflowServer

pytestmark = pytest.mark.slow

CLASSES = ["acne", "nevus", "tumor", "wheal"]
N_HELDOUT = 80
POLICY_TEXT = (
    "margin: 0.03\nrecall_floor: 0.0\nalpha: 0.05\nn_boot: 500\nci: 0.95\nseed: 0\n"
    "superiority_level: 0.95\nmin_improvement: 0.0\nmax_ece: null\nrecall_floor_confidence: 0.95\nmax_group_loss: null\nmin_group_support: 30\nmin_disjoint_heldout: 50\n"
)


@pytest.fixture(scope="module")
def store(prefect_harness, tmp_path_factory, monkeypatch_module):
    root = tmp_path_factory.mktemp("gate")
    use_local_stores(monkeypatch_module, root)
    policy = root / "promotion.yaml"
    policy.write_text(POLICY_TEXT)
    yield {"root": root, "policy": str(policy)}
    get_settings.cache_clear()


@pytest.fixture()
def model_name(store, monkeypatch) -> str:
    """A registered-model name of the test's own (a fresh registry state per test)."""
    name = f"gate-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("SKINFLOW_REGISTERED_MODEL", name)
    get_settings.cache_clear()
    yield name
    get_settings.cache_clear()


@pytest.fixture()
def heldout() -> dict:
    """80 held-out images (20 a class) with their SHA-256 digests, as a test split has them."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (N_HELDOUT, 8, 8, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(len(CLASSES)), N_HELDOUT // len(CLASSES))
    digests = [hashlib.sha256(img.tobytes()).hexdigest() for img in images]
    return {"images": images, "labels": labels, "digests": digests}


def _one_hot(pred: np.ndarray) -> np.ndarray:
    probs = np.full((len(pred), len(CLASSES)), 0.01)
    probs[np.arange(len(pred)), pred] = 0.97
    return probs


def _wrong_on(labels: np.ndarray, items: np.ndarray) -> np.ndarray:
    pred = labels.copy()
    pred[items] = (labels[items] + 1) % len(CLASSES)
    return pred


def _experiment_id() -> str:
    """The test experiment, its artifacts under the test's data root."""
    exp = mlflow.get_experiment_by_name("gate-test")
    if exp is not None:
        return exp.experiment_id
    if mlflow.get_tracking_uri().startswith("http"):  # a server stores the artifacts itself
        return mlflow.create_experiment("gate-test")
    return mlflow.create_experiment("gate-test", artifact_location=str(get_settings().data_root / "artifacts"))


def register(
    name: str, heldout: dict, pred: np.ndarray, trained_on: list[str] | None, classes: list[str] = CLASSES
) -> str:
    """A registered version whose run holds what the gate reads: model meta (``classes``), its
    stored predictions on the held-out set and (unless None) the digests of its train/val images
    (a hand-made manifest: the given digests split between train and val, plus others)."""
    with mlflow.start_run(experiment_id=_experiment_id()) as run:
        run_id = run.info.run_id
        tracked_models.log_model_weights(
            run_id, {"w": torch.zeros(1)}, [], tracked_models.model_meta("tiny", classes, 0)
        )
        tracked_models.log_predictions(
            "test", _one_hot(pred), heldout_digest(heldout["images"], heldout["labels"], CLASSES)
        )
        if trained_on is not None:
            own = [hashlib.sha256(f"{run_id}-{i}".encode()).hexdigest() for i in range(40)]
            digests = own + list(trained_on)
            records = pd.DataFrame(
                {
                    "path": [f"img{i}.jpg" for i in range(len(digests))],
                    "sha256": digests,
                    "split": ["train", "val"] * (len(digests) // 2) + ["train"] * (len(digests) % 2),
                }
            )
            tracked_models.log_training_digests(run_id, records, "hand-made")
        logged = mlflow.initialize_logged_model(name="model", source_run_id=run_id)
    return registry.register_version(f"models:/{logged.model_id}", name)


def gate(version: str, heldout: dict, policy: str) -> dict:
    """promotion_gate inside a flow, with its Prefect retries."""
    from tasks.mlflow_tasks import promotion_gate

    @flow(name="gate-test")
    def run() -> dict:
        return promotion_gate(
            version, heldout["images"], heldout["labels"], CLASSES, policy, digests=heldout["digests"]
        )

    return run()


async def _artifact(key: str):
    """The newest artifact with ``key`` (other tests of the session publish the same key)."""
    from prefect.client.schemas.sorting import ArtifactSort

    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), sort=ArtifactSort.CREATED_DESC, limit=1
        )
    return found[0] if found else None


def test_the_gate_leaves_out_held_out_images_a_model_trained_on(model_name, heldout, store) -> None:
    """The champion trained on 20 of the new test images (an older split put them in its train
    and val) and is right on exactly those; on the other 60 the challenger is better. Scored on
    all 80 the memorised images would keep the champion; the gate scores the disjoint part."""
    labels, digests = heldout["labels"], heldout["digests"]
    memorised = np.arange(0, N_HELDOUT, 4)  # 20 images, 5 a class
    elsewhere = np.setdiff1d(np.arange(N_HELDOUT), memorised)
    champion_pred = _wrong_on(labels, elsewhere[::3])  # wrong on 20 of the other 60
    challenger_pred = _wrong_on(labels, np.concatenate([memorised, elsewhere[::12]]))  # 5 of the 60
    champion = register(model_name, heldout, champion_pred, [digests[i] for i in memorised])
    registry.set_alias(model_name, "champion", champion)
    challenger = register(model_name, heldout, challenger_pred, [digests[-1]])  # one overlap of its own
    policy = PromotionPolicy.load(store["policy"])
    assert not decide(labels, challenger_pred, champion_pred, CLASSES, policy).promote, "all 80: champion kept"

    out = gate(challenger, heldout, store["policy"])
    assert out["heldout_overlap"] == {"challenger": 1, "champion": 20}
    assert out["evaluated_on"] == N_HELDOUT - 21 and out["heldout_images"] == N_HELDOUT
    keep = np.ones(N_HELDOUT, bool)
    keep[memorised] = keep[-1] = False
    expected = decide(labels[keep], challenger_pred[keep], champion_pred[keep], CLASSES, policy)
    assert out["promoted"] is True and out["reason"] == expected.reason
    assert registry.get_alias_version(model_name, "champion") == challenger
    artifact = asyncio.run(_artifact("retrain-gate"))
    assert f"Evaluated on {N_HELDOUT - 21} of {N_HELDOUT} held-out images" in artifact.data
    assert "heldout_overlap.champion | 20" in artifact.data


def test_the_gate_refuses_when_too_few_disjoint_images_remain(model_name, heldout, store) -> None:
    labels, digests = heldout["labels"], heldout["digests"]
    champion = register(model_name, heldout, _wrong_on(labels, np.arange(0, N_HELDOUT, 3)), digests[:40])
    registry.set_alias(model_name, "champion", champion)
    challenger = register(model_name, heldout, labels.copy(), None)  # recorded no training images
    out = gate(challenger, heldout, store["policy"])
    assert out["heldout_overlap"] == {"challenger": None, "champion": 40} and out["evaluated_on"] == 40
    assert out["promoted"] is False and out["decision"] == "refused"
    assert out["reason"].startswith("refused: only 40 of 80") and "min_disjoint_heldout=50" in out["reason"]
    assert registry.get_alias_version(model_name, "champion") == champion
    assert MlflowClient().get_model_version(model_name, challenger).tags["gate_decision"] == "refused"


def test_a_retry_after_the_alias_moved_reports_the_promotion(model_name, heldout, store, monkeypatch) -> None:
    """The tag call after the alias move fails once (a 503 from the tracking server, injected at
    MlflowClient.set_model_version_tag on the real store); Prefect retries the task, which finds
    the challenger already champion: it is reported promoted, with the tags, not a tie."""
    labels = heldout["labels"]
    champion = register(model_name, heldout, _wrong_on(labels, np.arange(0, N_HELDOUT, 4)), [])
    registry.set_alias(model_name, "champion", champion)
    challenger = register(model_name, heldout, _wrong_on(labels, np.arange(0, N_HELDOUT, 40)), [])

    real_tag, real_alias = MlflowClient.set_model_version_tag, MlflowClient.set_registered_model_alias
    calls = {"alias": 0, "failed": 0}

    def count_alias(self, *args, **kwargs):
        calls["alias"] += 1
        return real_alias(self, *args, **kwargs)

    def flaky_tag(self, name, version, key, value):
        moved = registry.get_alias_version(name, "champion") == str(version)
        if key == "gate_decision" and moved and not calls["failed"]:
            calls["failed"] += 1
            raise MlflowException("tracking server temporarily unavailable", error_code=TEMPORARILY_UNAVAILABLE)
        return real_tag(self, name, version, key, value)

    monkeypatch.setattr(MlflowClient, "set_model_version_tag", flaky_tag)
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", count_alias)
    out = gate(challenger, heldout, store["policy"])

    assert calls == {"alias": 2, "failed": 1}, "two attempts, the first failed after moving the alias"
    assert out["promoted"] is True and out["champion_before"] == champion
    assert out["reason"].startswith("better:")
    assert registry.get_alias_version(model_name, "champion") == challenger
    tags = MlflowClient().get_model_version(model_name, challenger).tags
    assert tags["gate_decision"] == "promoted" and tags["gate_champion_before"] == champion
    assert tags["gate_reason"] == out["reason"]


@pytest.fixture(scope="module")
def gate_server(store):
    """A real ``mlflow server`` process (sqlite store, served artifacts) for the gate's fault test."""
    server = MlflowServer(store["root"] / "server").start()
    yield server
    server.stop()


ALIAS_PATH = "/api/2.0/mlflow/registered-models/alias"
TAG_PATH = "/api/2.0/mlflow/model-versions/set-tag"


def test_a_retry_after_the_alias_moved_on_a_real_server_reports_the_promotion(
    model_name, heldout, store, gate_server, monkeypatch, tmp_path
) -> None:
    """The same fault against a real ``mlflow server`` process: a real HTTP proxy process in front
    of it answers 503 to the first ``gate_decision`` tag request that follows a successful alias
    move (MLflow's own HTTP retries off, so the task sees it). Prefect retries the task; the
    retry finds the challenger already champion, reports it promoted, and the tags agree."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", gate_server.url)  # setting up: straight to the server
    get_settings.cache_clear()
    configure_mlflow(gate_server.url)
    labels = heldout["labels"]
    champion = register(model_name, heldout, _wrong_on(labels, np.arange(0, N_HELDOUT, 4)), [])
    registry.set_alias(model_name, "champion", champion)
    challenger = register(model_name, heldout, _wrong_on(labels, np.arange(0, N_HELDOUT, 40)), [])

    proxy = FaultProxy(gate_server.url, tmp_path, TAG_PATH, fail_body="gate_decision", after_path=ALIAS_PATH)
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", proxy.url)  # the gate: through the proxy
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        get_settings.cache_clear()
        configure_mlflow(proxy.url)
        out = gate(challenger, heldout, store["policy"])
        seen = proxy.requests()
    finally:
        proxy.close()

    writes = [(r["path"], r["status"]) for r in seen if r["path"] in (ALIAS_PATH, TAG_PATH)]
    assert writes == [
        (TAG_PATH, 200),
        (ALIAS_PATH, 200),
        (TAG_PATH, 503),  # attempt 1: failed after the move
        (TAG_PATH, 200),
        (ALIAS_PATH, 200),
        (TAG_PATH, 200),
        (TAG_PATH, 200),
    ], writes
    assert out["promoted"] is True and out["decision"] == "promoted" and out["champion_before"] == champion
    assert out["reason"].startswith("better:")
    configure_mlflow(gate_server.url)  # read back from the server itself
    assert registry.get_alias_version(model_name, "champion") == challenger
    tags = MlflowClient().get_model_version(model_name, challenger).tags
    assert tags["gate_decision"] == "promoted" and tags["gate_champion_before"] == champion
    assert tags["gate_reason"] == out["reason"]
    assert "gate_decision" not in MlflowClient().get_model_version(model_name, champion).tags


def test_a_value_error_in_the_gate_is_not_retried(model_name, heldout, store, monkeypatch) -> None:
    labels = heldout["labels"]
    champion = register(model_name, heldout, labels.copy(), [], classes=["a", "b", "c", "d"])
    registry.set_alias(model_name, "champion", champion)
    challenger = register(model_name, heldout, labels.copy(), [])
    attempts = []
    real = registry.get_alias_version
    monkeypatch.setattr(registry, "get_alias_version", lambda *a: attempts.append(a) or real(*a))
    with pytest.raises(ValueError, match="different classes"):
        gate(challenger, heldout, store["policy"])
    assert len(attempts) == 1


def test_io_retry_retries_transient_errors_only(store) -> None:
    attempts = {"value": 0, "network": 0}

    @task(**{**IO_RETRY, "retry_delay_seconds": 0})
    def bad_value() -> None:
        attempts["value"] += 1
        raise ValueError("champion and challenger have different classes")

    @task(**{**IO_RETRY, "retry_delay_seconds": 0})
    def flaky_network() -> str:
        attempts["network"] += 1
        if attempts["network"] < 3:
            raise ConnectionError("connection refused")
        return "ok"

    @flow(name="retry-test")
    def run() -> str:
        try:
            bad_value()
        except ValueError:
            pass
        return flaky_network()

    assert run() == "ok"
    assert attempts == {"value": 1, "network": 3}
