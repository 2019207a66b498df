"""The monitor flow (flows/monitor.py) end to end under Prefect's test harness (a real
temporary Prefect server), against a real MLflow store (sqlite) and a champion trained on a
tiny synthetic set: a drifted SD-198-style batch with an out-of-map class folder and a
Thumbs.db through the CLI, the alert through Apprise to a local HTTP receiver, the event on
the Prefect server, the verdict page and Evidently's report in headless Chromium, the snapshots
in the Evidently workspace, and real isic9 batches."""

from __future__ import annotations

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from ml.data.config import DataConfig
from ml.data.synth import SynthConfig, generate
from ml.settings import get_settings
from ml.train.config import TrainConfig
from tests.conftest import use_local_stores

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def champion(prefect_harness, tmp_path_factory, monkeypatch_module):
    """A registered champion (1 epoch, 24 px) trained on a synthetic set by the train flow."""
    from flows.train import train_flow
    from ml.tracking import registry

    root = tmp_path_factory.mktemp("monitor")
    use_local_stores(monkeypatch_module, root)
    data = root / "synth"
    generate(data, SynthConfig(per_class=10, size=32, seed=1), progress=False)
    summary = train_flow(
        data=DataConfig(source=str(data), size=24),
        training=TrainConfig(epochs=1, lr=0.02, schedule="sgd", snapshots=0, batch_size=16, progress=False),
        out_dir=str(root / "train"),
    )
    name = get_settings().registered_model
    version = registry.register_version(summary["model_uri"], name, tags={})
    registry.set_alias(name, "champion", version)
    yield {"root": root, "data": data, "run_id": summary["run_id"]}
    get_settings.cache_clear()


class _Receiver(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).received.append({"path": self.path, "body": json.loads(body or b"{}")})
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture(scope="module")
def receiver():
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"json://127.0.0.1:{server.server_address[1]}/skinflow-alerts", _Receiver.received
    server.shutdown()


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    from flows.cli import main

    with pytest.raises(SystemExit) as done:
        main(args)
    out = capsys.readouterr()
    return done.value.code, out.out, out.err


@pytest.fixture(scope="module")
def drifted_run(champion, receiver, tmp_path_factory, monkeypatch_module):
    """A shifted batch (dark skin tones, noise) in SD-198 layout: mapped folders, one folder the
    class map does not cover, a Thumbs.db; run through `skinflow drift --fail-on-drift`."""
    batch = tmp_path_factory.mktemp("batch") / "sd198"
    generate(
        batch, SynthConfig(per_class=4, size=40, seed=7, skin_tones=[0, 0, 0, 0, 1, 1], noise=0.04), progress=False
    )
    (batch / "synth_meta.csv").unlink()
    shutil.move(str(batch / "wheal"), str(batch / "Stevens_Johnson_Syndrome"))  # out of map: 4 images
    (batch / "acne" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0" + b"\0" * 100)
    monkeypatch_module.setenv("SKINFLOW_DRIFT_APPRISE_URL", receiver[0])
    out_dir = champion["root"] / "monitor-out"
    return {
        "batch": batch,
        "out_dir": out_dir,
        "args": ["drift", str(batch), "--class-map", "sd198_to_10", "--out", str(out_dir), "--fail-on-drift"],
    }


def test_no_champion_is_a_clear_error_naming_model_and_alias(champion, capsys, tmp_path):
    (tmp_path / "b").mkdir()
    code, _, err = _cli(["drift", str(tmp_path / "b"), "--model", "models:/nobody-registered@champion"], capsys)
    assert code == 2
    assert "'nobody-registered'" in err and "'champion'" in err and "Traceback" not in err


def _drift_once(drifted_run: dict, capsys) -> tuple[int, str, str]:
    """The module's one `skinflow drift` run, whichever test asks first (xdist may reorder them)."""
    if "result" not in drifted_run:
        drifted_run["result"] = _cli(drifted_run["args"], capsys)
    return drifted_run["result"]


def test_drifted_batch_is_reported_alerted_and_recorded(drifted_run, receiver, capsys):
    code, out, err = _drift_once(drifted_run, capsys)
    assert code == 1, out + err  # --fail-on-drift
    assert "DRIFT VERDICT: DRIFT" in out
    assert "out of map (kept as unlabelled): Stevens_Johnson_Syndrome: 4 image(s)" in out
    assert "acne/Thumbs.db: not_an_image" in out
    assert "event: sent" in out and "notification: sent" in out
    reports = sorted(drifted_run["out_dir"].glob("*/drift_summary.json"))
    assert len(reports) == 1
    folder = reports[0].parent
    summary = json.loads(reports[0].read_text())
    assert summary["verdict"] == "drift" and summary["covariate"]["drifted"]
    assert summary["inputs"]["out_of_map"] == {"Stevens_Johnson_Syndrome": 4}
    assert summary["n_batch"] == 40 and summary["reference"]["kind"] == "champion-training"
    # the batch was drawn from the two darkest tones: its skin-tone shares say so beside the reference's
    shares = {r["group"]: r for r in summary["skin_tone_shares"]}
    dark = sum(shares[g]["batch_share"] for g in ("brown", "dark"))
    assert dark >= 0.7 and dark > sum(shares[g]["reference_share"] for g in ("brown", "dark")) + 0.3
    assert summary["reference"]["validation_images"] > 0 and summary["label_shift"]["bbse"]["priors"]
    # the alert: JSON beside the report, the Apprise notification at the receiver
    alert = json.loads((folder / "alert.json").read_text())
    assert alert["event"] == "skinflow.drift.detected" and alert["batch"] == str(drifted_run["batch"])
    bodies = [r["body"] for r in receiver[1] if r["path"] == "/skinflow-alerts"]
    assert len(bodies) == 1 and "drift" in bodies[0]["title"] and "covariate" in bodies[0]["message"]
    assert receiver[0].split("//")[1] not in out + err  # the URL is never printed
    # the MLflow run of skinflow-monitor holds the report, the summary and the verdict
    exp = mlflow.get_experiment_by_name("skinflow-monitor")
    run = MlflowClient().get_run(summary["mlflow_run_id"])
    assert run.info.experiment_id == exp.experiment_id and run.data.tags["drift_verdict"] == "drift"
    arts = {a.path for a in MlflowClient().list_artifacts(run.info.run_id, "reports")}
    assert {"reports/drift_report.html", "reports/drift_summary.json"} <= arts
    assert "reports/index.html" in arts  # the verdict page beside Evidently's report
    assert run.data.metrics["drifted_share"] == pytest.approx(summary["covariate"]["drifted_share"])
    # the snapshot is in the Evidently workspace under the data root, project of the registered model
    from ml.monitor.workspace import list_snapshots

    ev = summary["evidently"]
    assert ev["workspace"] == str(get_settings().data_root / "evidently")
    assert ev["project"] == f"skinflow-monitor/{get_settings().registered_model}"
    assert ev["snapshot_id"] in [i for i, _ in list_snapshots(ev["workspace"], ev["project"])]


def test_the_event_reached_the_prefect_server(drifted_run, capsys):
    import asyncio

    assert _drift_once(drifted_run, capsys)[0] == 1

    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter

    async def events():
        async with get_client() as client:
            page = await client.read_events(
                EventFilter(event=EventNameFilter(name=["skinflow.drift.detected"])), limit=50
            )
            return page.events

    import time

    deadline, found = time.monotonic() + 30, []
    while not found and time.monotonic() < deadline:  # the server stores events asynchronously
        found = asyncio.run(events())
        time.sleep(0 if found else 1)
    assert found, "no skinflow.drift.detected event on the Prefect server"
    event = found[0]
    assert event.resource.id == f"skinflow.batch.{drifted_run['batch']}"
    assert event.payload["verdict"] == "drift" and event.payload["batch"] == str(drifted_run["batch"])
    assert any(r.id.startswith("mlflow.run.") for r in event.related)


def test_report_opens_in_headless_chromium_with_verdict_and_embedding_drift(drifted_run, tmp_path_factory, capsys):
    from tests.integration.test_mlflow_ui import ensure_chromium

    code, out, err = _drift_once(drifted_run, capsys)
    assert code == 1, out + err

    ensure_chromium()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from infra.ui_screenshot import headless_chrome

    (page,) = sorted(drifted_run["out_dir"].glob("*/index.html"))
    report = page.parent / "drift_report.html"
    assert "skinflow" not in report.read_text()  # Evidently's report as Evidently wrote it
    with headless_chrome(tmp_path_factory.mktemp("chromium")) as driver:
        driver.get(page.resolve().as_uri())
        verdict = driver.find_element(By.ID, "skinflow-verdict").text
        assert "Drift verdict: drift" in verdict and "covariate" in verdict
        tones = driver.find_element(By.ID, "skinflow-skin-tones").text
        assert "skin-tone group (ITA)" in tones and "dark" in tones
        assert driver.find_element(By.ID, "skinflow-report-link").get_attribute("href") == report.resolve().as_uri()
        driver.switch_to.frame(driver.find_element(By.ID, "skinflow-report"))  # the report, shown in the page
        WebDriverWait(driver, 60).until(lambda d: "Drift in embeddings" in d.find_element(By.TAG_NAME, "body").text)
        body = driver.find_element(By.TAG_NAME, "body").text
        assert "penultimate" in body and "Drifted Columns" in body


def test_decision_numbers_are_the_report_numbers(champion):
    """What decides is what the HTML shows: the summary's numbers are the report's results."""
    import numpy as np

    from ml.monitor import drift
    from ml.monitor.describe import describe
    from ml.monitor.model import load_monitored_model
    from ml.monitor.policy import DriftPolicy
    from ml.monitor.reference import load_reference

    model = load_monitored_model("models:/skin-lesion-classifier@champion")
    reference = load_reference(model, max_images=60)
    ref, cur = describe(reference.records, model), describe(reference.validation, model)
    summary, snapshot = drift.measure_drift(ref, cur, DriftPolicy.load())
    results = snapshot.dict()
    decided = {r["column"]: r["score"] for r in summary["columns"]}
    shown = {r["column"]: r["score"] for r in drift.column_results(results)}
    assert set(decided) <= set(shown) and {"max_prob", "pred_class"} <= set(decided)
    assert all(np.isclose(decided[c], shown[c]) for c in decided)
    emb = {k: summary["embedding"][k] for k in ("model_auc", "mmd")}
    assert drift.report_embedding_scores(results) == pytest.approx(emb)


def test_real_isic9_batches_against_the_synthetic_champion(champion, isic9, tmp_path):
    """isic9's test split (dermoscopy, classes the model does not know: all out of map) against
    the synthetic champion's training images, and the reverse direction: the synthetic set as
    the batch against isic9's train split as the named reference."""
    from flows.monitor import monitor_flow
    from ml.monitor.config import MonitorConfig

    workspace = str(tmp_path / "evidently")  # a team's workspace folder (MonitorConfig.workspace, --workspace)
    forward = monitor_flow(MonitorConfig(batch=str(isic9 / "test"), out_dir=str(tmp_path / "fwd"), workspace=workspace))
    assert forward["verdict"] == "drift" and forward["n_batch"] > 50
    assert sum(forward["inputs"]["out_of_map"].values()) == forward["n_batch"]
    assert Path(forward["report_html"]).stat().st_size > 100_000
    assert forward["top_drifted"]
    reverse = monitor_flow(
        MonitorConfig(
            batch=str(champion["data"]),
            reference=str(isic9 / "train"),
            max_reference=150,
            out_dir=str(tmp_path / "rev"),
            workspace=workspace,
        )
    )
    assert reverse["verdict"] == "drift" and reverse["reference"]["kind"] == "dataset"
    assert reverse["n_reference"] == 150
    # two monitor runs of one model on one workspace: two snapshots in one project
    from evidently.ui.workspace import Workspace

    assert forward["evidently"]["workspace"] == reverse["evidently"]["workspace"] == workspace
    assert forward["evidently"]["project_id"] == reverse["evidently"]["project_id"]
    workspace = Workspace.create(forward["evidently"]["workspace"])
    (project,) = workspace.search_project(forward["evidently"]["project"])
    runs = {str(i) for i in workspace.list_runs(project.id)}
    assert {forward["evidently"]["snapshot_id"], reverse["evidently"]["snapshot_id"]} <= runs


def test_apprise_url_from_a_prefect_secret_block(prefect_harness, receiver):
    """The URL may live in a Secret block instead of the environment; it reaches the receiver."""
    from prefect.blocks.system import Secret

    from ml.monitor.alerts import notify
    from tasks.monitor import apprise_url

    Secret(value=receiver[0].replace("/skinflow-alerts", "/from-secret")).save("drift-apprise", overwrite=True)
    url = apprise_url("drift-apprise")
    payload = {"verdict": "drift", "batch": "b", "reasons": ["covariate: test"], "top_drifted": [], "links": {}}
    assert notify(url, payload)
    assert any(r["path"] == "/from-secret" and "drift" in r["body"]["title"] for r in receiver[1])
