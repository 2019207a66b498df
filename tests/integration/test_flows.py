"""train, tune and retrain flows under Prefect's test harness, against a real MLflow
tracking store (sqlite) and a real local Ray, on tiny synthetic data."""

from __future__ import annotations

import mlflow
import pytest
from mlflow import MlflowClient

from ml.data.config import DataConfig
from ml.settings import get_settings
from ml.tracking import models as tracked_models
from ml.tracking import registry
from ml.tracking import runs as tracking_runs
from ml.train.config import LRFindConfig, SweepConfig, TrainConfig
from tests.conftest import use_local_stores

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def flows_env(prefect_harness, tmp_path_factory, monkeypatch_module):
    """Data root, MLflow store and a tiny synthetic set, all under a temp folder."""
    from ml.data.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("flows")
    use_local_stores(monkeypatch_module, root)
    data = root / "synth"
    generate(data, SynthConfig(per_class=14, size=40, seed=1), progress=False)
    yield {"root": root, "data": str(data), "cfg": DataConfig(source=str(data), size=32)}
    get_settings.cache_clear()


def _train(**kw) -> TrainConfig:
    return TrainConfig(batch_size=16, **kw)


def _runs(experiment: str):
    exp = mlflow.get_experiment_by_name(experiment)
    assert exp is not None, f"experiment {experiment} was not created"
    return MlflowClient().search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def _count(experiment: str) -> int:
    """Runs in ``experiment``; 0 while it does not exist (test order under xdist is not fixed)."""
    return len(_runs(experiment)) if mlflow.get_experiment_by_name(experiment) is not None else 0


def test_train_flow_logs_a_comparable_run(flows_env):
    from flows.train import train_flow

    out = flows_env["root"] / "train"
    summary = train_flow(
        data=flows_env["cfg"],
        training=_train(schedule="sgdr_dlr_clm", epochs=3, snapshots=2),
        lr_find=LRFindConfig(num_iter=12),
        out_dir=str(out),
    )
    run = MlflowClient().get_run(summary["run_id"])
    # the Prefect flow run: named after what it ran, its id on the MLflow run, its task runs tagged
    # (read before this test calls tasks of its own)
    from uuid import UUID

    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(UUID(run.data.tags["prefect_flow_run_id"]))
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
    assert flow_run.name == "train-synth-resnet18-sgdr_dlr_clm"
    assert task_runs and all({"skinflow", "train"} <= set(t.tags) for t in task_runs)
    # the flow run's Prefect artifact links its MLflow run
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]))
        )
    links = [a for a in artifacts if (a.key or "").endswith("mlflow-run")]  # Prefect stores links as markdown
    assert [a.key for a in links] == ["skinflow-train-mlflow-run"]
    assert f"/runs/{summary['run_id']}" in links[0].data
    # the LR the range test chose is the LR the model trained with, and what its report says
    assert run.data.params["lr"] == str(summary["lr"])
    import json

    local = mlflow.artifacts.download_artifacts(
        run_id=summary["run_id"], artifact_path="reports/lr_finder.json", dst_path=str(out / "dl")
    )
    assert json.loads(open(local).read())["chosen"] == summary["lr"]
    # figures come from the held-out test split, and are those of the predictions the run stored
    assert summary["eval_split"] == "test"
    from sklearn.metrics import balanced_accuracy_score

    from flows.train import prepare_data
    from ml.eval.gate import heldout_digest

    _, cache = prepare_data(flows_env["cfg"])
    images, labels = cache.subset("test")
    assert summary["eval_images"] == len(labels) > 0
    probs = tracked_models.load_predictions(
        f"runs:/{summary['run_id']}/model", heldout_digest(images, labels, cache.classes)
    )
    assert summary["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, probs.argmax(1)))
    assert run.data.metrics["test_balanced_accuracy"] == pytest.approx(summary["balanced_accuracy"])
    assert run.info.status == "FINISHED"
    assert (
        run.data.tags["schedule"] == "sgdr_dlr_clm" and run.data.tags["dataset_version"] == summary["dataset_version"]
    )
    assert run.data.params["schedule"] == "sgdr_dlr_clm" and run.data.params["epochs"] == "3"
    hist = MlflowClient().get_metric_history(summary["run_id"], "val_balanced_accuracy")
    assert [m.step for m in hist] == [1, 2, 3]
    assert len(MlflowClient().get_metric_history(summary["run_id"], "lr_group_0")) == 3
    arts = {a.path for a in MlflowClient().list_artifacts(summary["run_id"], "plots")}
    assert {
        "plots/lr_finder.png",
        "plots/lr_schedule.png",
        "plots/curves.png",
        "plots/confusion_matrix.png",
        "plots/roc.png",
    } <= arts
    assert MlflowClient().list_artifacts(summary["run_id"], "model")
    assert run.data.metrics["test_macro_f1"] == pytest.approx(summary["macro_f1"])
    assert run.inputs.dataset_inputs, "the dataset version is recorded as an MLflow dataset input"


def test_train_flow_rejects_bad_requests_before_work(flows_env):
    from prefect.exceptions import ParameterTypeError

    from flows.train import train_flow

    before = _count("skinflow-train")  # this test may run before the one that creates the experiment
    # parameters as a deployment sends them: plain mappings, validated into the config objects
    with pytest.raises(ParameterTypeError, match="schedule"):
        train_flow(data={"source": flows_env["data"]}, training={"schedule": "cosine"})
    with pytest.raises(ParameterTypeError, match="epochs"):
        train_flow(data={"source": flows_env["data"]}, training={"epochs": 0})
    with pytest.raises(ParameterTypeError, match="val_frac"):
        train_flow(data={"source": flows_env["data"], "val_frac": 0.6, "test_frac": 0.5})
    assert _count("skinflow-train") == before, "nothing started"


def test_tune_flow_runs_trials_as_child_runs(flows_env, ray_local):
    from flows.tune import tune_flow
    from ml.train.sweep import SCORE

    res = tune_flow(
        data=flows_env["cfg"],
        sweep=SweepConfig(schedules=["sgd", "sgdr_dlr_clm"], amp=[False], epochs=2, name="t-child"),
        training=_train(),
        lr_find=LRFindConfig(num_iter=12),
        out_dir=str(flows_env["root"] / "tune"),
    )
    assert len(res["trials"]) == 2 and not res["failed"]
    # one range test per optimiser family; each trial's LR is drawn inside its own family's bracket
    assert {f: r["schedules"] for f, r in res["lr_find"].items()} == {"sgd": ["sgd"], "sgd_dlr": ["sgdr_dlr_clm"]}
    family = {"sgd": "sgd", "sgdr_dlr_clm": "sgd_dlr"}
    for t in res["trials"]:
        lo, hi = res["lr_find"][family[t["schedule"]]]["bracket"]
        assert t["lr_bracket"] == [lo, hi] == res["lr_brackets"][t["schedule"]] and lo <= t["lr"] <= hi
    # 2 epochs end inside sgdr_dlr_clm's second cycle: every trial trains its first, whole
    assert res["epochs"] == 1 and "inside a cycle" in res["epochs_note"]
    assert {t["schedule"] for t in res["trials"]} == {"sgd", "sgdr_dlr_clm"}
    for t in res["trials"]:  # per-epoch reports kept for the speedup (eta) over the sgd trial
        assert len(t["history"]) == 1 and all(h["epoch_seconds"] > 0 for h in t["history"])
        assert t[SCORE] is not None and t["node_id"]
    runs = [r for r in _runs("skinflow-tune") if r.data.tags.get("mlflow.parentRunId") == res["run_id"]]
    children = [r for r in runs if "trial" in r.data.tags]
    assert len(children) == 2
    for child in children:
        assert len(MlflowClient().get_metric_history(child.info.run_id, "val_balanced_accuracy")) >= 1
        assert [m.step for m in MlflowClient().get_metric_history(child.info.run_id, SCORE)] == [1]
        assert (child.data.tags["precision"], child.data.tags["precision_reason"]) == ("fp32", "amp off")
        params = child.data.params
        lo, hi = res["lr_brackets"][params["schedule"]]
        assert (float(params["lr_bracket_lo"]), float(params["lr_bracket_hi"])) == pytest.approx((lo, hi))
        assert params["ensemble_snapshots"] == "3" and params["lr_family"] == family[params["schedule"]]
    range_tests = {r.data.tags["lr_family"]: r for r in runs if "lr_family" in r.data.tags}
    assert set(range_tests) == {"sgd", "sgd_dlr"}
    for fam, run in range_tests.items():
        assert run.info.run_id == res["lr_find"][fam]["run_id"]
        assert "plots/lr_finder.png" in {a.path for a in MlflowClient().list_artifacts(run.info.run_id, "plots")}
    assert res["amp_note"] is None  # nothing collapsed: AMP was not asked for


def test_tune_flow_reports_a_failing_trial_and_goes_on(flows_env, ray_local):
    from flows.tune import tune_flow

    # A given bracket skips the range test; at LR 1e6 plain SGD diverges (non-finite loss,
    # the trial raises) while Adam's normalised steps keep finite: one fails, the tune goes on.
    res = tune_flow(
        data=flows_env["cfg"],
        sweep=SweepConfig(schedules=["sgd", "adam"], amp=[False], epochs=1, name="t-fail"),
        training=_train(),
        out_dir=str(flows_env["root"] / "tune2"),
        lr_bracket=[1e5, 1e6],
    )
    assert res["lr_find"] is None
    failed = {t["schedule"] for t in res["failed"]}
    assert "sgd" in failed and all(
        "FloatingPointError" in t["error"] or "non-finite" in t["error"] for t in res["failed"]
    )
    assert len(res["trials"]) == 2


def test_retrain_registers_and_gates(flows_env, ray_local):
    from flows.retrain import retrain_flow

    name = get_settings().registered_model
    # tiny data cannot clear the shipped 0.30 recall floor on 10 classes: the test policy keeps
    # the shipped margin and statistics but lowers the floor so the first version is promoted
    policy = flows_env["root"] / "promotion.yaml"
    policy.write_text(
        "margin: 0.03\nrecall_floor: 0.0\nalpha: 0.05\nn_boot: 500\nci: 0.95\nseed: 0\nmin_disjoint_heldout: 10\nsuperiority_level: 0.95\nmin_improvement: 0.0\nmax_ece: null\nrecall_floor_confidence: 0.95\nmax_group_loss: null\nmin_group_support: 30\n"
    )  # the tiny test split has ~28 images
    first = retrain_flow(
        data=flows_env["cfg"],
        training=_train(lr=0.01, epochs=3),
        tune=False,
        validate_data=False,
        policy=str(policy),
        out_dir=str(flows_env["root"] / "r1"),
    )
    assert first["model_version"] == "1" and first["promoted"] is True
    champion = registry.get_alias_version(name, "champion")
    assert champion == "1"
    v = MlflowClient().get_model_version(name, "1")
    assert v.tags["dataset_version"] == first["dataset_version"] and v.tags["schedule"] == "sgdr_dlr_clm"
    assert v.tags["gate_decision"] in {"promoted", "kept"}
    # a much worse challenger (1 epoch at a tiny LR) never takes the champion alias
    worse = retrain_flow(
        data=flows_env["cfg"],
        training=_train(lr=1e-6, epochs=1, schedule="sgd"),
        tune=False,
        validate_data=False,
        policy=str(policy),
        out_dir=str(flows_env["root"] / "r2"),
    )
    assert worse["promoted"] is False
    assert registry.get_alias_version(name, "challenger") == worse["model_version"]
    assert registry.get_alias_version(name, "champion") == champion
    assert worse["gate_predictions"] == {"challenger": "stored", "champion": "stored"}

    # the stored held-out predictions the gate used are what the stored weights predict
    import numpy as np

    from flows.train import prepare_data
    from ml.data.split import split_digests
    from ml.eval.gate import heldout_digest
    from ml.train import recipes
    from tasks.mlflow_tasks import promotion_gate

    manifest, cache = prepare_data(flows_env["cfg"])
    images, labels = cache.subset("test")
    digests = split_digests(manifest, "test")
    for version in ("1", worse["model_version"]):
        uri = f"models:/{name}/{version}"
        stored = tracked_models.load_predictions(uri, heldout_digest(images, labels, cache.classes))
        states, meta = tracked_models.load_model_states(uri)
        again = recipes.predict_logged(
            meta["arch"], meta["classes"], states, meta["norm"], images, trust=meta["trust"]
        )  # calibrated, as stored
        np.testing.assert_allclose(stored, again, atol=1e-5)
        # another held-out set (one label changed) has no stored predictions
        other = labels.copy()
        other[0] = (other[0] + 1) % len(cache.classes)
        assert tracked_models.load_predictions(uri, heldout_digest(images, other, cache.classes)) is None
        # each registered model records the images it trained on: train and val, never test
        assert tracked_models.load_training_digests(uri) == set(split_digests(manifest, ["train", "val"]))
    # recomputing from the weights reaches the same decision as the stored predictions did
    recomputed = promotion_gate(
        worse["model_version"], images, labels, cache.classes, str(policy), recompute=True, digests=digests
    )
    assert recomputed["predictions"] == {"challenger": "recomputed", "champion": "recomputed"}
    assert recomputed["heldout_overlap"] == {"challenger": 0, "champion": 0}
    assert recomputed["evaluated_on"] == len(labels)
    assert recomputed["promoted"] is False and recomputed["reason"] == worse["gate_reason"]


def test_retrain_stops_on_critical_validation_failures(flows_env):
    """The flows_env images are 40 px, below the policy's minimum side: a critical integrity
    failure that must stop the loop before any training or registration."""
    from flows.retrain import retrain_flow
    from flows.validate import ValidationFailed

    name = get_settings().registered_model
    before = len(MlflowClient().search_model_versions(f"name='{name}'"))
    with pytest.raises(ValidationFailed, match="integrity"):
        retrain_flow(
            data=flows_env["cfg"],
            training=_train(lr=0.01, epochs=1),
            tune=False,
            validate_data=True,
            out_dir=str(flows_env["root"] / "r3"),
        )
    assert len(MlflowClient().search_model_versions(f"name='{name}'")) == before


def test_pretrain_then_fine_tune_from_the_stored_backbone(flows_env):
    """`pretrain` stores a backbone that `train --weights <path>` loads (head re-initialised)."""
    from flows.train import pretrain_flow, train_flow

    weights = flows_env["root"] / "backbone.pt"
    info = pretrain_flow(out=str(weights), data=flows_env["cfg"], training=_train(lr=0.01, epochs=1))
    assert weights.is_file() and info["weights"] == str(weights)
    summary = train_flow(
        data=flows_env["cfg"],
        training=_train(lr=0.01, epochs=1, weights=str(weights)),
        out_dir=str(flows_env["root"] / "ft"),
    )
    run = MlflowClient().get_run(summary["run_id"])
    assert run.data.params["weights"] == str(weights)


def test_a_range_test_whose_loss_never_falls_says_so(flows_env):
    """A ramp that starts far too high (the loss only rises from its first step) has found no
    learning rate: the flow's result says ``descended: false`` and the task warns in the run's
    log (on the Prefect server), naming the plot, instead of handing back the ramp's start as if
    it had been chosen."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    from flows.train import lr_find_flow
    from ml.train.config import LRFindConfig

    def run(lr_find: LRFindConfig, name: str) -> tuple[dict, list[str]]:
        state = lr_find_flow(
            data=flows_env["cfg"],
            training=_train(schedule="sgdr", epochs=1),
            lr_find=lr_find,
            out_dir=str(flows_env["root"] / name),
            return_state=True,
        )
        APILogHandler().flush()
        run_id = state.state_details.flow_run_id
        with get_client(sync_client=True) as client:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
        return state.result(), [log.message for log in logs if log.level >= 30]

    res, warnings = run(LRFindConfig(start_lr=2.0, end_lr=200.0, num_iter=20), "never-falls")
    assert res["descended"] is False, res
    assert res["chosen"] == pytest.approx(2.0)  # the ramp's start: nothing was chosen
    said = [w for w in warnings if w.startswith("LR range test: no LR in 2..") and "lowered the loss" in w]
    assert len(said) == 1 and "never-falls/lr_finder.png" in said[0], warnings
    # the normal case, on the same images: a ramp from 1e-5 descends and says nothing of the kind
    ok, warnings = run(LRFindConfig(start_lr=1e-5, end_lr=10.0, num_iter=40), "falls")
    assert ok["descended"] is True and not [w for w in warnings if "lowered the loss" in w], (ok, warnings)


def test_unreachable_mlflow_fails_with_a_message_naming_it(flows_env, monkeypatch):
    """After its retries the flow fails naming the tracking service and its URL (every retry is
    taken, with the waits shortened: the shipped 2, 5 and 10 s are the settings' to test)."""
    from flows.train import train_flow
    from ml.tracking.runs import ServiceUnavailableError
    from tasks.mlflow_tasks import open_run
    from tests.conftest import free_port

    assert open_run.retries == 3
    monkeypatch.setattr(open_run, "retry_delay_seconds", [0.1, 0.1, 0.1])
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    get_settings.cache_clear()
    try:
        with pytest.raises(ServiceUnavailableError, match=f"MLflow.*{url}"):
            train_flow(
                data=flows_env["cfg"], training=_train(lr=0.01, epochs=1), out_dir=str(flows_env["root"] / "down")
            )
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
        tracking_runs.configure_mlflow(get_settings().mlflow_tracking_uri)


def test_tune_storage_on_s3_and_restore_by_name(flows_env, ray_local, s3, monkeypatch):
    """With a bucket configured, Tune's experiment lives on S3 (the real local endpoint); running
    the same tune name again restores it (Tuner.restore) instead of training anew."""
    from flows.tune import tune_flow

    storage, bucket = s3
    monkeypatch.setenv("SKINFLOW_S3_BUCKET", bucket[5:])
    monkeypatch.setenv("SKINFLOW_S3_ENDPOINT_URL", storage.endpoint_url)
    get_settings.cache_clear()
    try:
        kwargs = dict(
            data=flows_env["cfg"],
            sweep=SweepConfig(schedules=["sgdr"], amp=[False], epochs=1, name="t-s3"),
            training=_train(),
            lr_bracket=[0.005, 0.01],
            out_dir=str(flows_env["root"] / "tune-s3"),
        )
        first = tune_flow(**kwargs)
        keys = storage.list(f"{bucket}/skinflow/tune/t-s3/")
        assert any(k.endswith("experiment_state.json") or "experiment_state" in k for k in keys), keys[:10]
        assert any("checkpoint_" in k for k in keys), "trial checkpoints are stored on S3"
        second = tune_flow(**kwargs)
        assert second["best"]["lr"] == first["best"]["lr"]
        assert second["best"]["mlflow_run_id"] == first["best"]["mlflow_run_id"], "restored, not re-run"
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()


def test_repeated_fits_report_mean_and_std(flows_env):
    """repeats=3 refits with seeds 0, 1, 2 and reports mean +/- std over the three evaluations."""
    from flows.train import train_flow

    summary = train_flow(
        data=flows_env["cfg"], training=_train(lr=0.01, epochs=1), repeats=3, out_dir=str(flows_env["root"] / "rep")
    )
    stats = summary["repeats"]["metrics"]["macro_f1"]
    assert summary["repeats"]["n_runs"] == 3 and stats["n"] == 3
    assert summary["repeats"]["seeds"] == [0, 1, 2], "each refit has its own seed"
    # three seeds give three different models: their losses cannot all coincide
    assert summary["repeats"]["metrics"]["loss"]["std"] > 0
    run = MlflowClient().get_run(summary["run_id"])
    assert run.data.metrics["test_macro_f1_mean"] == pytest.approx(stats["mean"])
    assert all("±" in text for text in summary["confused_pairs_mean_std"])


def test_a_second_train_on_the_same_images_reuses_the_range_test_and_says_so(flows_env):
    """The range test is stored under what it ran on and with: a later train of the same images,
    model and settings (more epochs) takes its result, says so and logs the same curve in its own
    run; another seed measures again, and so does --fresh-lr-test (reuse off)."""
    import json

    from flows.train import train_flow

    root, lr_find = flows_env["root"] / "reuse", LRFindConfig(num_iter=10)

    def train(name: str, cfg: TrainConfig, finder: LRFindConfig) -> tuple[dict, dict]:
        summary = train_flow(data=flows_env["cfg"], training=cfg, lr_find=finder, out_dir=str(root / name))
        local = mlflow.artifacts.download_artifacts(
            run_id=summary["run_id"], artifact_path="reports/lr_finder.json", dst_path=str(root / name / "dl")
        )
        curve = MlflowClient().get_metric_history(summary["run_id"], "lr_finder_loss")
        return summary, {**json.loads(open(local).read()), "curve": [m.value for m in curve]}

    cfg = _train(schedule="adam", epochs=1)
    first, measured = train("first", cfg, lr_find.model_copy(update={"reuse": False}))
    again, reused = train("again", cfg.model_copy(update={"epochs": 2}), lr_find)
    assert not measured["reused"] and not first["lr_range_reused"]
    assert reused["reused"] and again["lr_range_reused"] and reused["measured_at"] == measured["measured_at"]
    assert again["lr"] == first["lr"] and reused["bracket"] == measured["bracket"]
    assert reused["curve"] == measured["curve"] and len(reused["curve"]) >= 2  # logged in the new run too
    assert (root / "again" / "plots" / "lr_finder.png").is_file()
    other_seed, _ = train("seed1", cfg.model_copy(update={"seed": 1}), lr_find)
    assert not other_seed["lr_range_reused"]
    fresh, refreshed = train("fresh", cfg, lr_find.model_copy(update={"reuse": False}))
    assert not fresh["lr_range_reused"] and refreshed["measured_at"] >= measured["measured_at"]
