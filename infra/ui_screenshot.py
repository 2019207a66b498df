"""Screenshots of the MLflow UI in headless Chromium (Debian's ``chromium`` + ``chromium-driver``,
driven by Selenium): what a person sees, for the README and for the browser test.

    python -m infra.ui_screenshot --store sqlite:///mlflow.db --experiment skinflow-tune \\
        --out docs/img/demo-tune-runs.png

starts ``mlflow server`` on a free 127.0.0.1 port over the store, opens the experiment's runs
page (``ml.tracking.runs.runs_page_url``), waits for the runs table and saves the PNG.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
RUN_LINKS = ".ag-row [col-id='attributes.`Run Name`'] a[href*='/runs/']"


def install_chromium() -> bool:
    """Install Debian's chromium + chromium-driver unless both are there (idempotent).
    Returns False where that is impossible (not root, no apt-get)."""
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return True
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return False
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return True


@contextlib.contextmanager
def headless_chrome(profile_dir: str | Path, width: int = 1440, height: int = 760) -> Iterator:
    """A Selenium Chrome driver on headless Chromium with a fresh profile; quits on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        f"--window-size={width},{height}",
        f"--user-data-dir={profile_dir}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=DriverService(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_ui(store: str, timeout: float = 120) -> Iterator[str]:
    """``mlflow server`` over ``store`` on a free 127.0.0.1 port; yields its URL, stops it after."""
    port = _free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen(
        [
            str(mlflow_bin),
            "server",
            "--backend-store-uri",
            store,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # no GenAI job runners
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"mlflow server on {store} did not start") from None
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(20)


def screenshot_runs(driver, ui: str, experiment_id: str, out: str | Path, wait_s: float = 30) -> Path:
    """Open the experiment's runs table, wait for its run names, close the assistant panel and save."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from ml.tracking.runs import runs_page_url

    driver.get(runs_page_url(experiment_id, ui))
    WebDriverWait(driver, wait_s).until(
        lambda d: any(a.text.strip() for a in d.find_elements(By.CSS_SELECTOR, RUN_LINKS))
    )
    for close in driver.find_elements(By.CSS_SELECTOR, "button[data-component-id='mlflow.assistant.chat_panel.close']"):
        close.click()  # the assistant panel takes a third of the width
    # expand parent runs (a tune's trials are its child runs, folded under it by default)
    for toggle in driver.find_elements(By.CSS_SELECTOR, ".ag-row [col-id='attributes.`Run Name`'] button"):
        try:
            toggle.click()
        except Exception:
            pass
    time.sleep(2)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(out))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", required=True, help="MLflow backend store URI, e.g. sqlite:///mlflow.db")
    ap.add_argument("--experiment", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if not install_chromium():
        sys.exit("chromium/chromedriver missing and apt-get is not usable here")
    import mlflow

    mlflow.set_tracking_uri(args.store)
    exp = mlflow.get_experiment_by_name(args.experiment)
    if exp is None:
        sys.exit(f"no experiment {args.experiment!r} in {args.store}")
    with mlflow_ui(args.store) as ui, tempfile.TemporaryDirectory() as profile, headless_chrome(profile) as driver:
        print(screenshot_runs(driver, ui, exp.experiment_id, args.out))


if __name__ == "__main__":
    main()
