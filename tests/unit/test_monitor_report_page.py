"""skinflow's verdict page (index.html) beside Evidently's report, which stays as
``snapshot.save_html`` wrote it."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from ml.monitor import drift
from ml.monitor.report_page import PAGE_FILE, REPORT_FILE, verdict_page, write_report_pages

HOSTILE = '<img src=x onerror="alert(1)">'


def summary(**changes) -> dict:
    base = {
        "verdict": "drift",
        "reasons": ["covariate: 5/10 columns drifted (share 0.50)", f"embeddings: {HOSTILE}"],
        "batch": f"data/incoming/{HOSTILE}",
        "model_uri": "models:/skin-lesion-classifier@champion",
        "n_batch": 1200,
        "n_reference": 1000,
        "covariate": {
            "drifted_share": 0.5,
            "n_drifted": 5,
            "n_tested": 10,
            "share_threshold": 0.5,
            "holm_significant": ["brightness"],
        },
        "embedding": {"model_auc": 0.81, "model_auc_threshold": 0.6, "mmd": 0.02, "mmd_threshold": 0.015},
        "label_shift": {"predicted": {"p_value": 0.2}, "bbse": {"priors": {"acne": 0.4, HOSTILE: 0.1}}},
        "top_drifted": ["brightness", "contrast"],
        "policy": {"label_alpha": 0.01},
        "mlflow_run_url": "http://127.0.0.1:5000/#/experiments/1/runs/abc",
    }
    return {**base, **changes}


class _Spy:
    """A snapshot whose ``save_html`` output is recorded as Evidently wrote it."""

    def __init__(self, snapshot):
        self.snapshot, self.written = snapshot, None

    def save_html(self, filename):
        self.snapshot.save_html(filename)
        with open(filename, "rb") as f:
            self.written = f.read()


@pytest.fixture(scope="module")
def snapshot():
    from evidently import Report
    from evidently.metrics import ValueDrift

    rng = np.random.default_rng(0)
    cur, ref = pd.DataFrame({"x": rng.normal(0.5, 1, 60)}), pd.DataFrame({"x": rng.normal(0, 1, 60)})
    return Report([ValueDrift(column="x")], include_tests=True).run(cur, ref)


class _Elements(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _parse(page: str) -> _Elements:
    parsed = _Elements()
    parsed.feed(page)
    return parsed


def test_the_page_has_the_verdict_and_shows_evidentlys_unmodified_report(snapshot, tmp_path):
    spy = _Spy(snapshot)
    files = write_report_pages(spy, summary(), tmp_path)
    assert files == {"report": tmp_path / REPORT_FILE, "page": tmp_path / PAGE_FILE}
    report = files["report"].read_bytes()
    assert report == spy.written and b"skinflow" not in report  # Evidently's file, as it wrote it
    page = files["page"].read_text()
    parsed = _parse(page)
    ids = {attrs.get("id"): (tag, attrs) for tag, attrs in parsed.tags if attrs.get("id")}
    assert ids["skinflow-verdict"][0] == "div"
    assert (
        ids["skinflow-report"] == ("iframe", ids["skinflow-report"][1])
        and ids["skinflow-report"][1]["src"] == REPORT_FILE
    )
    assert ids["skinflow-report-link"][1]["href"] == REPORT_FILE
    text = " ".join(parsed.text)
    assert "Drift verdict: drift" in text and "covariate: 5/10 columns drifted" in text
    assert "1200 images vs 1000 reference images" in text and "0.81" in text and "brightness" in text


def test_every_value_is_escaped_and_nothing_is_fetched(tmp_path):
    page = verdict_page(summary())
    assert HOSTILE not in page and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page
    parsed = _parse(page)
    assert not [t for t, _ in parsed.tags if t in ("script", "link", "img")]  # offline: no scripts, styles or images
    sources = [a.get("src") or "" for _, a in parsed.tags] + [a.get("href") or "" for t, a in parsed.tags if t != "a"]
    assert not [s for s in sources if re.match(r"(https?:)?//", s)]
    # a link that is not http(s) is not linked
    assert "javascript:" not in verdict_page(summary(mlflow_run_url="javascript:alert(1)"))


def test_insufficient_and_a_sparse_summary_render(tmp_path):
    page = verdict_page({"verdict": "insufficient", "reasons": [], "n_batch": 5, "n_reference": 100})
    assert "Drift verdict: <span" in page and "insufficient" in page and "no rule fired" in page


def test_save_html_keeps_its_signature_for_the_bench(snapshot, tmp_path):
    spy = _Spy(snapshot)
    page = drift.save_html(spy, summary(), tmp_path / "report7.html")
    assert page == tmp_path / "report7.verdict.html"
    assert (tmp_path / "report7.html").read_bytes() == spy.written
    assert 'src="report7.html"' in page.read_text()
