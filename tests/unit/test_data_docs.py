"""The GX Data Docs site opens offline and shows the dataset's names as text; checks carry GX's own severity."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from great_expectations.expectations.metadata_types import FailureSeverity
from PIL import Image

from ml.data.synth import LABELS, SynthConfig, generate
from ml.quality.checks import all_checks
from ml.quality.data_docs import from_gx, gx_frame, gx_text, offline_source, remote_assets
from ml.quality.features import compute_features
from ml.quality.validation import load_policy, validate_features

CLASSES = list(LABELS)
XSS = "<script>alert(1)</script>"
GX_TEMPLATES = Path(__import__("great_expectations").__file__).parent / "render" / "view"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):
    """``(report, docs dir, features)`` of a clean synthetic set plus one too-small image whose path holds a
    script tag (folder ``<script>alert(1)<`` + file ``script>.jpg``) and one named ``R&D <b>.jpg``."""
    root = tmp_path_factory.mktemp("docs")
    generate(root / "ds", SynthConfig(per_class=6, size=64, seed=0), progress=False)
    meta = pd.read_csv(root / "ds" / "synth_meta.csv")
    rows = [(str(root / "ds" / p), label, "train") for p, label in zip(meta["path"], meta["label"])]
    evil = root / "ds" / "acne" / "<script>alert(1)<"
    evil.mkdir()
    noise = np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(noise).save(evil / "script>.jpg")
    Image.fromarray(noise[::-1]).save(root / "ds" / "acne" / "R&D <b>.jpg")
    rows += [(str(evil / "script>.jpg"), "acne", "train"), (str(root / "ds" / "acne" / "R&D <b>.jpg"), "acne", "train")]
    features = compute_features(pd.DataFrame(rows, columns=["path", "label", "split"]), workers=1)
    report = validate_features(features, load_policy(), CLASSES, root / "docs")
    return report, root / "docs", features


def _pages(docs: Path) -> list[Path]:
    return sorted(docs.rglob("*.html"))


def test_names_with_markup_come_back_as_they_were(site):
    report, _, features = site
    small = report.outcome("min_side")
    expected = sorted(p for p in features["path"] if XSS in p or "R&D <b>" in p)
    assert len(expected) == 2 and sorted(small.details["unexpected"]) == expected
    assert sorted(e["id"] for e in small.details["examples"]) == expected
    assert {e["value"] for e in small.details["examples"]} == {40}


def test_no_page_loads_anything_from_the_network(site):
    _, docs, _ = site
    pages = _pages(docs)
    assert docs / "index.html" in pages and len(pages) >= 8
    remote = {str(p.relative_to(docs)): remote_assets(p.read_text()) for p in pages}
    assert not {k: v for k, v in remote.items() if v}, remote
    for page in pages:  # every local image, script and stylesheet a page names is in the site
        text = re.sub(r"<link rel=\"shortcut icon\"[^>]*>", "", page.read_text())  # GX's favicon path is a level short
        for ref in re.findall(r"<(?:img|link|script)\b[^>]*?\b(?:src|href)=\"([^\"?#]+)", text):
            assert (page.parent / ref).resolve().is_file(), (page, ref)


def test_no_page_holds_the_raw_markup_of_a_name(site):
    _, docs, _ = site
    for page in _pages(docs):
        text = page.read_text()
        assert XSS not in text and "<script>alert" not in text and "R&D <b>" not in text, page
    integrity = next((docs / "validations" / "integrity" / "features").rglob("*.html")).read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.jpg" in integrity  # shown, as text
    assert "R&amp;D &lt;b&gt;.jpg" in integrity


def test_index_lists_every_validation_without_javascript(site):
    _, docs, _ = site
    index = (docs / "index.html").read_text()
    assert "bootstrapTable" not in index and "<script src" not in index
    links = set(re.findall(r"<a href=\"(validations/[^\"]+\.html)\">open</a>", index))
    pages = {str(p.relative_to(docs)) for p in (docs / "validations").rglob("*.html")}
    assert links == pages and len(pages) == 10  # one GX suite per (concern, table), all of one run
    assert len({Path(p).parts[-3:-1] for p in pages}) == 1  # one run: name and time
    assert "integrity.features" in index and "skinflow-validate" in index


def test_graphs_show_their_data_as_tables(site):
    _, docs, _ = site
    kl = next((docs / "validations" / "class_balance" / "usable").rglob("*.html")).read_text()
    assert "vegaEmbed" not in kl and "ge-offline-graph" in kl
    assert all(f"<td>{c}</td>" in kl for c in CLASSES)


def test_gx_templates_lose_every_remote_asset():
    sources = [
        *GX_TEMPLATES.joinpath("templates").glob("*.j2"),
        *GX_TEMPLATES.joinpath("static", "styles").glob("*.css"),
    ]
    assert len(sources) > 30
    before = [s for s in sources if remote_assets(s.read_text())]
    assert len(before) >= 4  # page, index, minimal page, script imports, default styles: GX's CDN links
    assert [s.name for s in sources if remote_assets(offline_source(s.read_text()))] == []
    navbar = offline_source(GX_TEMPLATES.joinpath("templates", "top_navbar.j2").read_text())
    assert "great-expectations-web-assets" not in navbar and "./static/images/" in navbar


@pytest.mark.parametrize("text", ["plain", "R&D <b>x</b>", "&amp; already", "a & b > c < d", XSS, "&lt", ""])
def test_gx_text_round_trips(text):
    shown = gx_text(text)
    assert "<" not in shown and ">" not in shown and from_gx(shown) == text
    assert gx_text(3) == 3 and from_gx(None) is None


def test_gx_frame_escapes_only_the_columns_named():
    frame = pd.DataFrame(
        {"path": ["a<b", "c"], "label": pd.Categorical(["x&y", "z"]), "n": [1, 2], "other": ["<", ">"]}
    )
    out = gx_frame(frame, ["path", "label", "n", "missing"])
    assert out["path"].tolist() == ["a&lt;b", "c"] and out["label"].tolist() == ["x&amp;y", "z"]
    assert out["n"].tolist() == [1, 2] and out["other"].tolist() == ["<", ">"]
    assert frame["path"].tolist() == ["a<b", "c"]  # the caller's frame is untouched


def test_checks_carry_gx_severity_and_their_name(site):
    report, _, features = site
    policy = load_policy()
    checks = all_checks(policy, CLASSES, features)
    by_name = {c.name: c for c in checks}
    assert by_name["decodes"].expectation.severity == FailureSeverity.CRITICAL
    assert by_name["flagged_share_per_class"].expectation.severity == FailureSeverity.WARNING
    assert by_name["within_split_duplicate_share"].severity == policy["duplicates_leakage"]["within_split_severity"]
    assert all(c.expectation.meta == {"check": c.name} for c in checks)
    assert {r.check: r.severity for r in report.results} == {c.name: c.severity for c in checks}


def test_a_severity_gx_or_the_report_does_not_know_is_refused():
    policy = load_policy()
    policy["confounders"]["artefact_severity"] = "info"  # GX knows it, the report does not
    features = pd.DataFrame(columns=["path", "label"])
    with pytest.raises(ValueError, match=r"policy severities \['info'\] are not among"):
        all_checks(policy, CLASSES, features)
