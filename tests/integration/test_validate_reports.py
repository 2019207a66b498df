"""A report that counts something names it: `skinflow validate` on a folder with a Thumbs.db and a
duplicate pair prints both by path (with the reason and the group), and summary.html shows them, read
as text and as rendered by headless Chromium. The GX Data Docs site beside it opens with the network
off, and a file whose path holds a script tag is shown as text, never written as markup."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from tests.conftest import VENV_BIN

XSS = "<script>alert(1)</script>"


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
    # a decodable but too small image (fails min_side, so GX lists it) at ulcer/<script>alert(1)</script>.jpg
    (ds / "ulcer" / "<script>alert(1)<").mkdir()
    noise = np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(noise).save(ds / "ulcer" / "<script>alert(1)<" / "script>.jpg")
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


def test_data_docs_are_self_contained_and_show_names_as_text(validated):
    """No page of the site names a remote script, stylesheet or image; no HTML the run wrote holds the raw
    script tag of the file's path; the integrity page lists that path escaped."""
    from ml.quality.data_docs import remote_assets

    ds, out, page = validated
    docs = page.parent / "data_docs"
    pages = sorted(docs.rglob("*.html"))
    assert docs / "index.html" in pages and len(pages) >= 10, out.stdout[-2000:]
    loads = {str(p.relative_to(docs)): remote_assets(p.read_text()) for p in pages}
    assert not {k: v for k, v in loads.items() if v}
    assert not re.search(r"<(script|link|img)\b[^>]*(src|href)=[\"']?https?://", "".join(p.read_text() for p in pages))
    written = sorted(page.parent.rglob("*.html"))
    assert page in written and [p for p in written if XSS in p.read_text()] == []
    integrity = next((docs / "validations" / "integrity" / "features").rglob("*.html")).read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.jpg" in integrity
    assert f"{ds / 'ulcer' / XSS}.jpg" in out.stdout  # the CLI names it in the failing min_side check


@pytest.mark.slow
@pytest.mark.browser
def test_data_docs_render_offline_in_chromium(validated, tmp_path):
    """With the network emulated off, the index lists every validation (a table written on the server,
    not by bootstrap-table) and a validation page shows its expectation table, the script-tag path as
    text, and no alert."""
    from infra.ui_screenshot import headless_chrome, install_chromium

    if not install_chromium():
        pytest.skip("chromium/chromedriver missing and apt-get is not usable here")
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    ds, _, page = validated
    docs = page.parent / "data_docs"
    integrity = next((docs / "validations" / "integrity" / "features").rglob("*.html"))
    with headless_chrome(tmp_path / "chromium") as driver:
        driver.execute_cdp_cmd("Network.enable", {})
        offline = {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1}
        driver.execute_cdp_cmd("Network.emulateNetworkConditions", offline)
        driver.get((docs / "index.html").as_uri())
        index_text = driver.find_element(By.TAG_NAME, "body").text
        links = [a.get_attribute("href") for a in driver.find_elements(By.LINK_TEXT, "open")]
        driver.get(integrity.as_uri())
        body = driver.find_element(By.TAG_NAME, "body").text
        headers = [th.text for th in driver.find_elements(By.CSS_SELECTOR, "table th")]
        fetched = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        driver.save_screenshot(str(tmp_path / "integrity.png"))
        with pytest.raises(NoAlertPresentException):
            driver.switch_to.alert.accept()
    assert "integrity.features" in index_text and "skinflow-validate" in index_text
    assert integrity.as_uri() in links and len(links) >= 10  # the validations and the suites
    assert {"Status", "Expectation", "Observed Value"} <= set(headers)
    assert "values must be greater than or equal to 64" in body and "unexpected values found" in body
    assert f"{ds / 'ulcer' / XSS}.jpg" in body  # the path, as text
    assert [u for u in fetched if not u.startswith("file:")] == []
    assert (tmp_path / "integrity.png").stat().st_size > 10_000
