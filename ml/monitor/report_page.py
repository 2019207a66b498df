"""skinflow's verdict page next to Evidently's report.

Evidently's HTML is written as ``snapshot.save_html`` writes it and never edited; the verdict
(verdict, reasons, the numbers behind them, BBSE priors) goes on a page of its own,
``index.html``, that links to the report and shows it in an ``<iframe>``. The page is plain
HTML with inline CSS: no script, nothing fetched from elsewhere, every value escaped.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any
from urllib.parse import quote

REPORT_FILE = "drift_report.html"
PAGE_FILE = "index.html"
COLOURS = {"drift": "#b00020", "no_drift": "#1b5e20"}  # anything else ("insufficient"): amber
STYLE = (
    "body{font-family:sans-serif;margin:16px}"
    "#skinflow-verdict{padding:12px;border:2px solid var(--c)}#skinflow-verdict h1{color:var(--c)}"
    "table{border-collapse:collapse}td,th{padding:2px 10px;text-align:left;border-bottom:1px solid #ddd}"
    "#skinflow-report{width:100%;height:85vh;border:1px solid #ccc;margin-top:12px}"
)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any, fmt: str = ".3g") -> str:
    """A float in ``fmt``; counts and anything else as they print (escaped)."""
    if value is None:
        return ""
    if isinstance(value, float) and not isinstance(value, bool):
        return _e(format(value, fmt))
    return _e(value)


def _numbers(summary: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(what, value, threshold) rows of the numbers the rules read."""
    cov, emb = summary.get("covariate") or {}, summary.get("embedding") or {}
    predicted = (summary.get("label_shift") or {}).get("predicted") or {}
    policy = summary.get("policy") or {}
    rows = [
        (
            "drifted share of tested columns",
            f"{_num(cov.get('drifted_share'), '.2f')} ({_num(cov.get('n_drifted'))}/{_num(cov.get('n_tested'))})",
            f">= {_num(cov.get('share_threshold'))}",
        ),
        ("Holm-significant columns", _e(", ".join(cov.get("holm_significant") or []) or "none"), ""),
        ("embeddings: model ROC AUC", _num(emb.get("model_auc")), f"> {_num(emb.get('model_auc_threshold'))}"),
        ("embeddings: MMD", _num(emb.get("mmd"), ".4f"), f"> {_num(emb.get('mmd_threshold'))}"),
        (
            "predicted classes: chi-square p",
            _num(predicted.get("p_value"), ".2g"),
            f"< {_num(policy.get('label_alpha'))}",
        ),
    ]
    return rows


def _tones_html(rows: list[dict[str, Any]]) -> str:
    """Skin-tone group shares of the reference and the batch (ITA), when the summary has them."""
    if not rows:
        return ""
    body = "".join(
        f"<tr><td>{_e(r['group'])}</td><td>{_num(r['reference_share'], '.2f')}</td>"
        f"<td>{_num(r['batch_share'], '.2f')}</td><td>{_num(r['batch_images'])}</td></tr>"
        for r in rows
    )
    return (
        '<table id="skinflow-skin-tones"><tr><th>skin-tone group (ITA)</th><th>reference share</th>'
        f"<th>batch share</th><th>batch images</th></tr>{body}</table>"
    )


def _safe_link(url: Any) -> str | None:
    """An http(s) URL, escaped for an attribute; anything else is not linked."""
    text = str(url or "")
    return _e(text) if text.startswith(("http://", "https://")) else None


def verdict_html(summary: dict[str, Any]) -> str:
    """The verdict block (``#skinflow-verdict``): verdict, batch, reasons, numbers, BBSE priors."""
    verdict = str(summary.get("verdict", ""))
    items = "".join(f"<li>{_e(r)}</li>" for r in summary.get("reasons") or []) or "<li>no rule fired</li>"
    numbers = "".join(f"<tr><td>{w}</td><td>{v}</td><td>{t}</td></tr>" for w, v, t in _numbers(summary))
    bbse = ((summary.get("label_shift") or {}).get("bbse") or {}).get("priors") or {}
    priors = ", ".join(f"{_e(k)} {_num(v, '.2f')}" for k, v in bbse.items())
    top = ", ".join(_e(c) for c in summary.get("top_drifted") or [])
    mlflow = _safe_link(summary.get("mlflow_run_url"))
    return (
        f'<div id="skinflow-verdict" style="--c:{COLOURS.get(verdict, "#8d6e00")}">'
        f'<h1>Drift verdict: <span id="skinflow-verdict-value">{_e(verdict)}</span></h1>'
        f"<p>batch {_e(summary.get('batch', ''))}: {_num(summary.get('n_batch'))} images vs "
        f"{_num(summary.get('n_reference'))} reference images"
        + (f"; model {_e(summary['model_uri'])}" if summary.get("model_uri") else "")
        + f"</p><ul>{items}</ul>"
        + f"<table><tr><th>rule input</th><th>value</th><th>fires when</th></tr>{numbers}</table>"
        + (f"<p>Top drifted columns: {top}</p>" if top else "")
        + (f"<p>BBSE priors: {priors}</p>" if priors else "")
        + _tones_html(summary.get("skin_tone_shares") or [])
        + (f'<p><a href="{mlflow}">MLflow run</a> (skinflow-monitor)</p>' if mlflow else "")
        + "</div>"
    )


def verdict_page(summary: dict[str, Any], report_name: str = REPORT_FILE) -> str:
    """The whole page: the verdict, a link to Evidently's report and the report in an iframe."""
    href = _e(quote(report_name))
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Drift verdict: {_e(summary.get('verdict', ''))}</title><style>{STYLE}</style></head><body>"
        + verdict_html(summary)
        + f'<p><a id="skinflow-report-link" href="{href}">Evidently report</a> (the full report on its own page)</p>'
        + f'<iframe id="skinflow-report" src="{href}" title="Evidently drift report"></iframe>'
        + "</body></html>\n"
    )


def write_report_pages(
    snapshot,
    summary: dict[str, Any],
    folder: str | Path,
    report_name: str = REPORT_FILE,
    page_name: str = PAGE_FILE,
) -> dict[str, Path]:
    """Evidently's report (``snapshot.save_html``, untouched) and the verdict page in ``folder``:
    ``{"report": folder/report_name, "page": folder/page_name}``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    report, page = folder / report_name, folder / page_name
    snapshot.save_html(str(report))
    page.write_text(verdict_page(summary, report_name), encoding="utf-8")
    return {"report": report, "page": page}
