"""What a person sees in the MLflow UI: a real `mlflow server` on a sqlite store that skinflow's own
code paths filled (two training runs on a tiny synthetic set), opened in headless Chromium.

Chromium and ChromeDriver come from Debian (``apt-get install chromium chromium-driver``, run by
:func:`ensure_chromium` when they are missing); Selenium drives them. Nothing leaves 127.0.0.1.
``SKINFLOW_SAVE_SCREENSHOTS=1`` writes the runs table to ``docs/img/mlflow-runs.png``."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from infra.ui_screenshot import RUN_LINKS, headless_chrome, install_chromium
from tests.conftest import REPO, VENV_BIN, Service, free_port, use_local_stores

pytestmark = [pytest.mark.slow, pytest.mark.browser]

METRIC = "val_balanced_accuracy"
SCREENSHOT = REPO / "docs" / "img" / "mlflow-runs.png"
WAIT_S = 30


def ensure_chromium() -> None:
    """Debian's chromium + chromium-driver, installed when missing; skip where impossible."""
    if not install_chromium():
        pytest.skip("chromium/chromedriver missing and apt-get is not usable here")


@pytest.fixture(scope="module")
def populated(tmp_path_factory, monkeypatch_module):
    """Two finished training runs (different schedules and LRs) logged as the train flow logs
    them: ``(root, experiment_id, run names)``."""
    from ml.data.cache import build_cache
    from ml.data.manifest import build_manifest
    from ml.data.split import split_manifest
    from ml.data.synth import SynthConfig, generate
    from ml.settings import get_settings
    from ml.tracking.runs import run_name
    from ml.train.config import TrainConfig
    from ml.train.loop import fit
    from ml.train.precision import choose_precision, resolve_device
    from tasks.mlflow_tasks import close_run, open_run
    from tasks.training import MlflowEpochLogger, evaluate_model, log_training_run

    root = tmp_path_factory.mktemp("ui")
    use_local_stores(monkeypatch_module, root)
    generate(root / "ds", SynthConfig(per_class=4, size=32, seed=0), progress=False)
    manifest = split_manifest(build_manifest(root / "ds"), val_frac=0.25, seed=0, max_distance=None)
    cache = build_cache(manifest, 32, root / "cache")
    names = []
    for schedule, lr in (("sgd", 0.01), ("sgdr_dlr_clm", 0.00345)):
        cfg = TrainConfig(schedule=schedule, lr=lr, epochs=1, batch_size=16, snapshots=0, progress=False)
        names.append(run_name("train", cfg, precision=choose_precision(resolve_device(cfg.device), cfg.amp).name))
        run_id, experiment_id = open_run.fn("skinflow-train", names[-1])
        result = fit(
            cache.subset("train"), cache.subset("val"), cache.classes, cfg, callbacks=[MlflowEpochLogger(run_id)]
        )
        log_training_run.fn(
            run_id,
            result,
            evaluate_model.fn(result, cache, "val"),
            "val",
            cache,
            manifest,
            str(root / "out" / schedule),
        )
        close_run.fn(run_id)
    yield root, experiment_id, names
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def mlflow_ui(populated):
    """``mlflow server`` (the process behind ``mlflow ui``) on the store, on a free port."""
    root = populated[0]
    port = free_port()
    svc = Service(
        "mlflow-ui",
        [
            str(VENV_BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{root}/mlflow.db",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        f"http://127.0.0.1:{port}/health",
        root,
        timeout=90,
    )
    yield f"http://127.0.0.1:{port}"
    svc.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium through ChromeDriver, with a fresh profile (no remembered UI choices)."""
    ensure_chromium()
    pytest.importorskip("selenium.webdriver")
    with headless_chrome(tmp_path_factory.mktemp("chromium")) as driver:  # quits chromedriver and browser
        yield driver


def test_runs_table_with_distinct_names_and_a_metric_column(populated, mlflow_ui, browser, tmp_path):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from ml.tracking.runs import runs_page_url

    _, experiment_id, names = populated
    assert len(set(names)) == len(names)
    started = time.monotonic()
    browser.get(runs_page_url(experiment_id, mlflow_ui))
    wait = WebDriverWait(browser, WAIT_S)
    # the link to each run in the Run Name column (the cell also holds the run's colour swatch)
    name_links = (By.CSS_SELECTOR, RUN_LINKS)
    metric_header = (By.CSS_SELECTOR, f".ag-header-cell[col-id='metrics.`{METRIC}`']")
    try:
        wait.until(lambda d: len([a for a in d.find_elements(*name_links) if a.text.strip()]) == len(names))
        wait.until(ec.visibility_of_element_located(metric_header))
    except TimeoutException as timeout:
        browser.save_screenshot(str(tmp_path / "failed.png"))
        raise AssertionError(
            f"no runs table with {METRIC} at {browser.current_url} (screenshot "
            f"{tmp_path / 'failed.png'}):\n{browser.find_element(By.TAG_NAME, 'body').text[:1500]}"
        ) from timeout

    assert f"/experiments/{experiment_id}/runs" in browser.current_url, "the runs tab, not the GenAI overview"
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "Detect Issues" not in body and "Token Usage" not in body, "GenAI overview content is shown"
    shown = sorted(a.text.strip() for a in browser.find_elements(*name_links))
    assert shown == sorted(names), f"run names in the table: {shown}"
    assert len({n[:22] for n in shown}) == len(names), "names differ within what the column shows"
    assert browser.find_element(*metric_header).text.strip() == METRIC
    datasets = browser.find_elements(By.CSS_SELECTOR, ".ag-row [col-id='attributes.`Dataset`']")
    assert len([d for d in datasets if d.text.startswith("dataset (")]) == len(names), "Dataset column"
    assert time.monotonic() - started < 60

    for close in browser.find_elements(
        By.CSS_SELECTOR, "button[data-component-id='mlflow.assistant.chat_panel.close']"
    ):
        close.click()  # the assistant panel takes a third of the width
    WebDriverWait(browser, 5).until(ec.visibility_of_element_located(metric_header))
    shot = tmp_path / "mlflow-runs.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("SKINFLOW_SAVE_SCREENSHOTS") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)
