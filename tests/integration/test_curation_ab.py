"""curation-ab end to end under Prefect's test harness, with a real MLflow store (sqlite), on a tiny
synthetic set whose pen marks are concentrated in one class."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from ml.data.config import DataConfig
from ml.quality.features import image_features
from ml.settings import get_settings
from ml.train.config import TrainConfig
from tests.conftest import use_local_stores

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ab_env(prefect_harness, tmp_path_factory, monkeypatch_module):
    from ml.data.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("curation_ab")
    use_local_stores(monkeypatch_module, root)
    data = root / "synth"
    generate(data, SynthConfig(per_class=10, size=32, seed=3, pen_rate={"leukoderma": 1.0}), progress=False)
    yield {"root": root, "data": data}
    get_settings.cache_clear()


async def _artifacts(key: str):
    async with get_client() as client:
        return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_curation_ab_trains_both_arms_on_one_split_and_reports_the_deltas(ab_env):
    from flows.curation_ab import curation_ab_flow

    data = ab_env["data"]
    before = _digests(data)
    out = ab_env["root"] / "out"
    res = curation_ab_flow(
        data=DataConfig(source=str(data), size=32),
        training=TrainConfig(epochs=1, batch_size=16, lr=0.01),
        out_dir=str(out),
    )

    # originals untouched; the curated copy is a new version under the data root
    assert _digests(data) == before
    curated_dir = Path(res["curated_dir"])
    assert curated_dir.is_relative_to(get_settings().data_root.resolve() / "datasets")
    assert res["curated_dataset_version"] != res["dataset_version"]

    # every pen-marked original has a curated image with a lower confounder score
    with (data / "synth_meta.csv").open() as fh:
        marked = {str((data / r["path"]).resolve()) for r in csv.DictReader(fh) if r["pen_mark"] == "1"}
    log = pd.read_csv(res["curation_log"])
    rows = log[log["path"].isin(marked)]
    assert len(marked) == 10 and len(rows) == 10
    assert set(rows["status"]) == {"curated"}
    for orig, cur in zip(rows["path"], rows["out_path"], strict=True):
        assert image_features(cur)["confounder_score"] < image_features(orig)["confounder_score"], orig

    # the curated CSV manifest keeps each image's split
    table = pd.read_csv(res["curated_manifest"])
    orig_split = dict(zip(log["path"], log["split"]))
    assert len(table) == len(log) and (table["split"] == table["source_path"].map(orig_split)).all()
    assert {"train", "val", "test"} == set(table["split"])

    # MLflow: parent in skinflow-curation with two finished children holding test metrics
    client = MlflowClient()
    exp = mlflow.get_experiment_by_name("skinflow-curation")
    assert exp is not None
    children = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{res['parent_run_id']}'"
    )
    by_arm = {r.data.tags["arm"]: r for r in children}
    assert set(by_arm) == {"baseline", "curated"}
    assert {a: r.info.run_id for a, r in by_arm.items()} == res["child_run_ids"]
    assert by_arm["curated"].data.tags["dataset_version"] == res["curated_dataset_version"]
    assert by_arm["baseline"].data.tags["dataset_version"] == res["dataset_version"]
    for r in by_arm.values():
        assert r.info.status == "FINISHED"
        assert r.data.params["seed"] == "0" and r.data.params["epochs"] == "1"
        assert {"test_accuracy", "test_balanced_accuracy", "test_macro_f1"} <= set(r.data.metrics)

    # reported deltas = curated run's metric - baseline run's metric, in the report and the parent run
    report = json.loads(Path(res["report"]).read_text())
    parent = client.get_run(res["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert {r["metric"] for r in report["comparison"]} == {"accuracy", "balanced_accuracy", "macro_f1"}
    for row in report["comparison"]:
        key = f"test_{row['metric']}"
        base, cur = by_arm["baseline"].data.metrics[key], by_arm["curated"].data.metrics[key]
        assert row["baseline"] == pytest.approx(base) and row["curated"] == pytest.approx(cur)
        assert row["delta"] == pytest.approx(cur - base)
        assert parent.data.metrics[f"delta_{key}"] == pytest.approx(cur - base)
    assert report["curated"]["counts"]["curated"] >= 10

    # the Prefect table artifact shows the same numbers (rounded to 4 places by tasks.common)
    arts = asyncio.run(_artifacts("curation-ab-summary"))
    assert len(arts) == 1 and arts[0].type == "table"
    table = json.loads(arts[0].data) if isinstance(arts[0].data, str) else arts[0].data
    shown = {r["metric"]: r for r in table}
    for row in report["comparison"]:
        assert shown[f"test_{row['metric']}"]["delta"] == pytest.approx(row["delta"], abs=1e-4)


def test_curation_ab_rejects_bad_requests_before_work(ab_env):
    from prefect.exceptions import ParameterTypeError

    from flows.curation_ab import curation_ab_flow

    data = DataConfig(source=str(ab_env["data"]))
    with pytest.raises(ParameterTypeError, match="steps.0: Input should be 'remove_confounders'"):
        curation_ab_flow(data=data, steps=["erase_everything"])
    with pytest.raises(ParameterTypeError, match="steps"):
        curation_ab_flow(data=data, steps=[])
    with pytest.raises(ValueError, match="test_frac"):
        curation_ab_flow(data=data.model_copy(update={"test_frac": 0.0}))
    with pytest.raises(ParameterTypeError, match="schedule"):
        curation_ab_flow(data=data, training={"schedule": "cosine"})
