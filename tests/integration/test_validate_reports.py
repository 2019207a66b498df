"""A report that counts something names it: `skinflow validate` on a folder with a Thumbs.db and a
duplicate pair prints both by path (with the reason and the group), and summary.html shows them, read
as text and as rendered by headless Chromium."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.conftest import VENV_BIN


@pytest.fixture(scope="module")
def validated(prefect_harness, tmp_path_factory):
    """``(dataset folder, CLI result, summary.html path)`` of one validate run."""
    from prefect.settings import PREFECT_API_URL

    from ml.data.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("names")
    ds = root / "ds"
    generate(ds, SynthConfig(per_class=10, size=64, seed=0), progress=False)
    (ds / "ulcer" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(120))  # an OLE2 header
    shutil.copyfile(ds / "tumor" / "tumor_0003.jpg", ds / "tumor" / "tumor_0003 (copy).jpg")
    env = {
        **os.environ,
        "SKINFLOW_DATA_ROOT": str(root / "data"),
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db",
    }
    out = subprocess.run(
        [str(VENV_BIN / "skinflow"), "validate", str(ds), "--out", str(root / "val")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    pages = list((root / "val").rglob("summary.html"))
    assert len(pages) == 1, out.stdout[-2000:] + out.stderr[-2000:]
    return ds, out, pages[0]


def test_cli_names_the_bad_file_and_the_duplicate_group(validated):
    ds, out, _ = validated
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]  # a file that does not decode is critical
    lines = out.stdout.splitlines()
    thumbs = str(ds / "ulcer" / "Thumbs.db")
    assert any(thumbs in ln and "not_an_image" in ln for ln in lines), out.stdout[-3000:]
    assert "files not used (1):" in out.stdout
    group = [ln for ln in lines if "duplicate groups" not in ln and "tumor_0003 (copy).jpg" in ln and "exact" in ln]
    assert group and str(ds / "tumor" / "tumor_0003.jpg") in group[0], out.stdout[-3000:]
    kinds = [ln for ln in lines if ln.startswith("confounder kinds (images flagged): pen_mark=")]
    assert kinds and all(f"{k}=" in kinds[0] for k in ("ruler", "text_band", "drape", "dark_background"))


def test_summary_html_names_them_too(validated):
    ds, _, page = validated
    text = page.read_text()
    assert f"{ds / 'ulcer' / 'Thumbs.db'}: not_an_image" in text  # in the failing check's row
    assert "Files not used (1)" in text and "Duplicate groups (1)" in text
    assert str(ds / "tumor" / "tumor_0003 (copy).jpg") in text
    assert "Confounder kinds per class" in text


@pytest.mark.slow
@pytest.mark.browser
def test_summary_html_renders_the_names_in_chromium(validated, tmp_path):
    from infra.ui_screenshot import headless_chrome, install_chromium

    if not install_chromium():
        pytest.skip("chromium/chromedriver missing and apt-get is not usable here")
    from selenium.webdriver.common.by import By

    ds, _, page = validated
    with headless_chrome(tmp_path / "chromium") as driver:
        driver.get(page.as_uri())
        body = driver.find_element(By.TAG_NAME, "body").text
        headings = [h.text for h in driver.find_elements(By.TAG_NAME, "h2")]
        driver.save_screenshot(str(tmp_path / "summary.png"))
    assert f"{ds / 'ulcer' / 'Thumbs.db'}: not_an_image" in body
    assert str(ds / "tumor" / "tumor_0003 (copy).jpg") in body
    assert {"Files not used (1)", "Duplicate groups (1)"} <= set(headings)
    assert (tmp_path / "summary.png").stat().st_size > 10_000
