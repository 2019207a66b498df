"""augcheck end to end under Prefect's test harness with a real MLflow store (sqlite), tiny
settings: table + verdict, GAN grids per stage in the parent run, the synthetic images as a new
dataset version (originals untouched), a second run resuming the GAN from its checkpoints."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from typer.testing import CliRunner

from ml.data.config import DataConfig
from ml.gan.augcheck import NOT_SAFE, SAFE
from ml.gan.config import AugCheckConfig, ProGANConfig
from ml.settings import get_settings
from tests.conftest import use_local_stores

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(prefect_harness, tmp_path_factory, monkeypatch_module):
    from ml.data.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("augcheck")
    use_local_stores(monkeypatch_module, root)
    data = root / "synth"
    generate(data, SynthConfig(class_priors={"acne": 0.5, "blister": 0.5}, total=48, size=32, seed=5), progress=False)
    yield {"root": root, "data": data}
    get_settings.cache_clear()


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


async def _artifacts(key: str):
    async with get_client() as client:
        return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))


def test_augcheck_flow_produces_the_table_and_the_verdict(env):
    from flows.augcheck import augcheck_flow

    before = _digests(env["data"])
    out = env["root"] / "out"
    kwargs = dict(
        data=DataConfig(source=str(env["data"]), test_frac=0.25),
        check=AugCheckConfig(ratio=0.3, n_synthetic=24, classifiers=2, epochs=1, grid_images=4, closest_pairs=3),
        gan=ProGANConfig(
            resolution=16, fade_iters=3, stable_iters=3, batch_size=8, latent_dim=16, max_channels=16, progress=False
        ),
        out_dir=str(out),
    )
    res = augcheck_flow(**kwargs)

    # the thesis's table form, one row per classifier, and a verdict with its reasons
    assert [row["run"] for row in res["table"]] == [1, 2]
    assert set(res["table"][0]) == {"run", "seed", "binary model accuracy", "acne estimate", "blister estimate"}
    for row in res["table"]:
        assert row["acne estimate"] + row["blister estimate"] == pytest.approx(100.0)
    assert res["verdict"] in (SAFE, NOT_SAFE) and res["safe"] == (res["verdict"] == SAFE)
    assert res["safe"] or res["reasons"]
    assert res["summary"]["n"] == 2 and res["summary"]["error"] == pytest.approx(res["summary"]["mean"] - 0.3)
    assert 0 <= res["memorisation"]["memorised_share"] <= 1 and Path(res["closest_pairs_png"]).is_file()
    assert 0 <= res["train_on_synthetic"]["tstr_accuracy"] <= 1

    # the samples are a new dataset version under the data root; the originals are untouched
    assert _digests(env["data"]) == before
    syn = Path(res["synthetic_dir"])
    assert get_settings().data_root.resolve() in syn.parents and env["data"].resolve() not in syn.parents
    assert len(pd.read_csv(syn / "manifest.csv")) == 24
    assert json.loads((syn / "meta.json").read_text())["ratio"] == 0.3

    # MLflow: parent run with the grids per stage, the table, the verdict
    client = MlflowClient()
    run = client.get_run(res["parent_run_id"])
    assert client.get_experiment(run.info.experiment_id).name == "skinflow-augcheck"
    assert run.data.tags["verdict"] == res["verdict"] and run.info.status == "FINISHED"
    grids = sorted(a.path for a in client.list_artifacts(run.info.run_id, "plots/gan"))
    assert grids == [
        "plots/gan/samples_stage0_4px.png",
        "plots/gan/samples_stage1_8px.png",
        "plots/gan/samples_stage2_16px.png",
    ]
    reports = {a.path for a in client.list_artifacts(run.info.run_id, "reports")}
    assert {"reports/augcheck.json", "reports/estimates.json"} <= reports
    assert "plots/closest_pairs.png" in {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert run.data.metrics["estimate_mean"] == pytest.approx(res["summary"]["mean"])
    assert len(client.get_metric_history(run.info.run_id, "gan_d_loss")) >= 3
    table = asyncio.run(_artifacts("augcheck-summary"))
    assert table and json.loads(table[0].data)[0]["run"] == 1
    assert asyncio.run(_artifacts("augcheck-verdict"))[0].data.startswith(f"# Verdict: {res['verdict']}")

    # the same command again: the GAN continues from its last stage checkpoint (here: done)
    again = augcheck_flow(**kwargs)
    assert again["gan"]["resumed_from_stage"] == 3 and again["synthetic_dir"] == res["synthetic_dir"]
    assert again["table"] == res["table"]


def test_cli_augcheck_refuses_bad_options_in_one_line(env):
    from flows.cli import app

    out = CliRunner().invoke(app, ["augcheck", "--data", str(env["data"]), "--ratio", "1.5"])
    assert out.exit_code == 2 and "ratio" in out.output and "Traceback" not in out.output
    out = CliRunner().invoke(app, ["augcheck", "--help"], env={"COLUMNS": "200"})
    assert out.exit_code == 0 and "(default: acne)" in out.output and "(default: 0.5)" in out.output
