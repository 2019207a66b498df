"""robustness and interpret flows end to end under Prefect's test harness, against a real MLflow
store (sqlite), on tiny synthetic data (24 px, one epoch)."""

from __future__ import annotations

import asyncio
import json

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from ml.data.config import DataConfig
from ml.interpret.config import InterpretConfig
from ml.robust.config import RobustnessConfig
from ml.settings import get_settings
from ml.train.config import TrainConfig
from tests.conftest import use_local_stores

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(prefect_harness, tmp_path_factory, monkeypatch_module):
    from ml.data.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("robust")
    use_local_stores(monkeypatch_module, root)
    data = root / "synth"
    generate(data, SynthConfig(per_class=8, size=32, seed=2), progress=False)
    yield {
        "root": root,
        "data": DataConfig(source=str(data), size=24),
        "training": TrainConfig(batch_size=16, epochs=1, lr=0.01, schedule="sgdr", snapshots=1, progress=False),
    }
    get_settings.cache_clear()


async def _artifacts(key: str):
    async with get_client() as client:
        return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))


def _table(key: str) -> list[dict]:
    arts = asyncio.run(_artifacts(key))
    assert arts and arts[-1].type == "table"
    return json.loads(arts[-1].data) if isinstance(arts[-1].data, str) else arts[-1].data


def _children(parent_id: str) -> list:
    exp = MlflowClient().get_run(parent_id).info.experiment_id
    return MlflowClient().search_runs(
        [exp], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'", order_by=["attributes.start_time ASC"]
    )


def _report(run_id: str, name: str, dst) -> dict:
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"reports/{name}.json", dst_path=str(dst))
    return json.loads(open(path).read())


def test_robustness_flow_gives_the_ablation_table_from_one_clean_model(env):
    from flows.robustness import robustness_flow

    rob = RobustnessConfig(noise_levels=[0.05, 0.15])
    out = env["root"] / "robustness"
    summary = robustness_flow(data=env["data"], training=env["training"], robustness=rob, out_dir=str(out))
    parent = MlflowClient().get_run(summary["run_id"])
    assert parent.info.status == "FINISHED"
    assert mlflow.get_experiment(parent.info.experiment_id).name == "skinflow-robustness"
    children = _children(summary["run_id"])
    assert len(children) == summary["models"] == 3 and all(c.info.status == "FINISHED" for c in children)
    assert [c.data.tags["train_status"] for c in children] == ["clean", "noise 5%", "noise 15%"]

    report = _report(summary["run_id"], "robustness", out / "dl")
    rows = report["rows"]
    assert [(r["train_status"], r["test_status"]) for r in rows] == [
        ("clean", "clean"),
        ("clean", "noise 5%"),
        ("clean", "noise 15%"),
        ("clean", "blur (isotropic 3x3)"),
        ("clean", "blur (anisotropic 45° 3x3)"),
        ("noise 5%", "clean"),
        ("noise 5%", "noise 5%"),
        ("noise 15%", "clean"),
        ("noise 15%", "noise 15%"),
    ]
    # one clean model serves every clean-trained row; one model per noise level
    assert len({r["run_id"] for r in rows[:5]}) == 1 and len({r["run_id"] for r in rows}) == 3
    by_run = {c.info.run_id: c for c in children}
    for r in rows:
        run = by_run[r["run_id"]]
        keys = [k for k in run.data.metrics if k.startswith("test_top1_")]
        assert keys and any(run.data.metrics[k] == pytest.approx(r["top1"]) for k in keys)
        assert 0 <= r["top1"] <= 1 and np.asarray(r["confusion_matrix"]).sum() == r["n"] > 0
    assert MlflowClient().get_metric_history(children[0].info.run_id, "val_balanced_accuracy")
    # the table in the thesis's form, the same in the Prefect artifact
    assert list(summary["table"][0]) == ["train status", "test status", "top-1", "balanced accuracy", "macro-F1"]
    shown = _table("robustness-summary")
    assert [row["top-1"] for row in shown] == pytest.approx([round(r["top1"], 4) for r in rows], abs=1e-4)
    arts = {a.path for a in MlflowClient().list_artifacts(summary["run_id"], "plots")}
    assert {
        "plots/accuracy_vs_noise.png",
        "plots/confusion_clean.png",
        "plots/confusion_blur_isotropic.png",
        "plots/confusion_blur_isotropic_minus_clean.png",
        "plots/confusion_blur_anisotropic.png",
        "plots/confusion_blur_anisotropic_minus_clean.png",
    } <= arts
    # the noise curves start at the clean model's clean score (the thesis's 0% column)
    assert all(curve[0] == [0.0, rows[0]["top1"]] for curve in report["curves"].values())


def test_interpret_flow_gives_confused_pairs_galleries_and_the_background_test(env):
    from flows.interpret import interpret_flow

    interp = InterpretConfig(seeds=2, top_pairs=2, per_pair=2, confidence=0.15, background_examples=2)
    out = env["root"] / "interpret"
    summary = interpret_flow(data=env["data"], training=env["training"], interpret=interp, out_dir=str(out))
    parent = MlflowClient().get_run(summary["run_id"])
    assert parent.info.status == "FINISHED"
    assert mlflow.get_experiment(parent.info.experiment_id).name == "skinflow-interpret"
    children = _children(summary["run_id"])
    assert len(children) == 2 and summary["seeds"] == [0, 1]
    assert [c.data.params["seed"] for c in children] == ["0", "1"]

    report = _report(summary["run_id"], "interpret", out / "dl")
    pairs = report["confused_pairs"]
    assert pairs and all(p["a"] != p["b"] and p["mean"] > 0 for p in pairs)
    assert pairs == sorted(pairs, key=lambda p: -p["mean"])
    # Table 4.2 form from the two fits' own confusion matrices: each unordered pair counted both ways
    accs = [c.data.metrics["test_accuracy"] for c in children]
    n = report["n_images"]
    total_errors = sum(p["mean"] for p in pairs) * 2
    assert total_errors == pytest.approx(sum((1 - a) * n for a in accs), abs=1e-6)
    dist = report["class_distribution"]
    assert sum(d["true_share"] for d in dist) == pytest.approx(1) and sum(
        d["predicted_share_mean"] for d in dist
    ) == pytest.approx(1)
    galleries = [g for g in report["galleries"] if g["png"]]
    assert galleries and summary["galleries"]
    for g in galleries:
        assert all(
            e["actual"] != e["predicted"] and {e["actual"], e["predicted"]} == set(g["pair"]) for e in g["images"]
        )
    assert report["cam_layer"] == "layer1.1"  # 24 px: the deepest resnet18 map with >= 4 px a side
    bg = report["background_test"]
    assert bg["n_confident"] == len(bg["indices"]) and bg["patch_frac"] == pytest.approx(1 / 3)
    if bg["n_confident"]:
        assert 0 <= bg["change_rate"] <= 1 and parent.data.metrics["test_background_change_rate"] == bg["change_rate"]
    arts = {a.path for a in MlflowClient().list_artifacts(summary["run_id"], "plots")}
    assert "plots/class_distribution.png" in arts and any(a.startswith("plots/gallery_1_") for a in arts)
    shown = _table("interpret-summary")
    assert [row["confused pair"] for row in shown] == [p["text"] for p in pairs[:8]]
