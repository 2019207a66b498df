"""Issue #23: a label conflict stops the retrain loop unless the validation policy quarantines it;
then the loop trains on a new dataset version without the conflicting files, which the validation
report, the MLflow runs and the flow's summary all name. Prefect's test harness, a sqlite MLflow
store, a tiny synthetic set with two planted conflicts (one picture copied into another class folder)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from ml.data.config import DataConfig
from ml.data.manifest import Manifest
from ml.settings import get_settings
from ml.train.config import TrainConfig
from tests.conftest import use_local_stores

COPIES = {("acne", "acne_0000.jpg"): "blister", ("tumor", "tumor_0001.jpg"): "ulcer"}
PROMOTION = (  # the shipped margin and statistics, a floor tiny data can clear (as in test_flows)
    "margin: 0.03\nrecall_floor: 0.0\nalpha: 0.05\nn_boot: 200\nci: 0.95\nseed: 0\n"
    "min_disjoint_heldout: 10\nsuperiority_level: 0.95\nmin_improvement: 0.0\nmax_ece: null\nrecall_floor_confidence: 0.95\nmax_group_loss: null\nmin_group_support: 30\n"
)


def _digests(root: Path) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def env(prefect_harness, tmp_path_factory, monkeypatch_module):
    from ml.data.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("quarantine-flow")
    use_local_stores(monkeypatch_module, root)
    data = root / "synth"
    generate(data, SynthConfig(per_class=12, size=64, seed=3), progress=False)
    conflicting = set()
    for (label, name), other in COPIES.items():
        shutil.copyfile(data / label / name, data / other / f"copy_of_{name}")
        conflicting |= {str(data / label / name), str(data / other / f"copy_of_{name}")}
    shipped = (Path(__file__).resolve().parents[2] / "policies" / "validation.yaml").read_text()
    assert "quarantine: [label_conflicts]" in shipped
    strict = root / "validation-no-quarantine.yaml"
    strict.write_text(shipped.replace("quarantine: [label_conflicts]", "quarantine: []"))
    (root / "promotion.yaml").write_text(PROMOTION)
    yield {
        "root": root,
        "data": data,
        "cfg": DataConfig(source=str(data), size=32),
        "conflicting": conflicting,
        "strict": str(strict),
        "before": _digests(data),
    }
    get_settings.cache_clear()


def _runs(experiment: str):
    exp = mlflow.get_experiment_by_name(experiment)
    return MlflowClient().search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"]) if exp else []


def test_without_quarantine_the_conflict_stops_the_loop(env):
    from flows.retrain import retrain_flow
    from flows.validate import ValidationFailed

    with pytest.raises(ValidationFailed, match=r"failed critical expectations: duplicates_leakage:label_conflicts$"):
        retrain_flow(
            data=env["cfg"],
            training=TrainConfig(batch_size=16, lr=0.01, epochs=1),
            tune=False,
            validation_policy=env["strict"],
            policy=str(env["root"] / "promotion.yaml"),
            out_dir=str(env["root"] / "strict"),
        )
    assert not _runs("skinflow-retrain")
    assert not list((get_settings().data_root / "datasets").glob("*-quarantined"))


def test_with_quarantine_the_loop_trains_on_a_new_version_without_the_conflicts(env):
    from flows.retrain import retrain_flow

    summary = retrain_flow(
        data=env["cfg"],
        training=TrainConfig(batch_size=16, lr=0.01, epochs=1),
        tune=False,
        policy=str(env["root"] / "promotion.yaml"),
        out_dir=str(env["root"] / "quarantined"),
    )
    # the summary the CLI prints says what was set aside and which version it trained on
    parent, version = summary["parent_dataset_version"], summary["dataset_version"]
    assert summary["validation_passed"] is True and summary["model_version"]
    assert (
        summary["quarantined"]
        == f"4 files (label_conflicts) in 2 groups set aside: dataset version {version} from {parent}"
    )
    # the new version lacks exactly the conflicting files and names its parent
    (path,) = (get_settings().data_root / "datasets").glob("synth-quarantined/*/manifest.csv")
    derived = Manifest.load(path)
    assert derived.version == version and derived.parent_version == parent
    assert set(derived.quarantined["path"]) == env["conflicting"]
    everything = {str(p) for p in env["data"].rglob("*.jpg")}
    assert set(derived.records["path"]) == everything - env["conflicting"]
    # the originals are untouched
    assert _digests(env["data"]) == env["before"]
    # the validation report: the new version's page names every file and the parent's failure
    page = next((env["root"] / "quarantined" / "validate" / version).glob("summary.html")).read_text()
    assert "Quarantined (4 files)" in page and all(p in page for p in env["conflicting"])
    assert "duplicates_leakage:label_conflicts" in page and parent in page
    assert (env["root"] / "quarantined" / "validate" / parent / "summary.html").is_file()
    # MLflow: the validation run and the retrain run carry the list, its count and the parent version
    validate_run = _runs("skinflow-validate")[0]
    retrain_run = MlflowClient().get_run(summary["run_id"])
    assert retrain_run.data.tags["dataset_version"] == version
    for run in (validate_run, retrain_run):
        assert run.data.params["quarantined_files"] == "4"
        assert run.data.tags["parent_dataset_version"] == parent
        assert run.data.tags["quarantine"] == summary["quarantined"]
        local = mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, artifact_path="quarantine.csv", dst_path=str(env["root"] / run.info.run_id)
        )
        listed = pd.read_csv(local, dtype=str, keep_default_na=False)
        assert set(listed["path"]) == env["conflicting"] and set(listed["reason"]) == {"label_conflicts"}
        assert listed.groupby("group")["label"].nunique().eq(2).all()
    # the Prefect artifact of the validation lists them too
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["validate-quarantine"])), limit=1
        )
    assert all(p in str(artifact.data) for p in env["conflicting"])
    assert summary["quarantined"] in (artifact.description or "")
