"""What a validation found: :class:`ExpectationOutcome` (one check, flattened), :class:`ValidationReport` (all of
them plus the derived tables behind the counts), their JSON form, lines for printing and the self-contained HTML
summary. No Great Expectations here: the runner (:mod:`ml.quality.validation`) reads GX's results into these."""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ml.data.manifest import QUARANTINE_COLUMNS

SEVERITIES = ("critical", "warning")
"""The severities a policy may give a check (GX's own ``FailureSeverity`` has ``info`` too)."""
MAX_EXAMPLES = 20
"""How many offending rows an outcome names with their value and reason (``details['examples']``)."""
BAD_FILE_COLUMNS = ["path", "label", "reason"]
DUPLICATE_GROUP_COLUMNS = ["group", "kind", "n", "paths", "labels", "splits"]
MAX_LISTED = 50
"""How many rows of a table (files not used, duplicate groups...) the HTML summary shows before "and N more"."""
MAX_PATHS = 8
"""How many paths of one duplicate group a line or cell shows before "and N more"."""


@dataclass(frozen=True)
class ExpectationOutcome:
    """One expectation's result, flattened."""

    suite: str
    check: str
    expectation: str
    column: str | None
    observed: Any
    threshold: Any
    success: bool
    severity: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class ValidationReport:
    """All outcomes of :func:`ml.quality.validation.validate_features` plus the derived duplicate tables.

    ``unexpected`` holds every id a row-wise check named (the outcomes' details keep the first ones);
    a report of data left after a quarantine (:mod:`ml.quality.quarantine`) names the files set aside
    (``quarantined``), the version they were set aside from (``parent_version``) and what that version
    failed (``failed_before``: ``suite:check`` names)."""

    results: list[ExpectationOutcome]
    label_conflicts: pd.DataFrame
    leaking_pairs: pd.DataFrame
    data_docs_index: Path | None = None
    bad_files: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=BAD_FILE_COLUMNS))
    duplicate_groups: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=DUPLICATE_GROUP_COLUMNS))
    confounders_by_class: pd.DataFrame = field(default_factory=pd.DataFrame)
    unexpected: dict[str, list[Any]] = field(default_factory=dict, repr=False)
    quarantined: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=QUARANTINE_COLUMNS))
    parent_version: str | None = None
    failed_before: list[str] = field(default_factory=list)
    data_docs_error: str | None = None
    skin_tones: pd.DataFrame = field(default_factory=pd.DataFrame)
    evidence: list = field(default_factory=list)  # ml.quality.evidence.Evidence of flagged images
    n_flagged: int = 0

    @property
    def critical_failures(self) -> list[ExpectationOutcome]:
        return [r for r in self.results if not r.success and r.severity == "critical"]

    @property
    def warnings(self) -> list[ExpectationOutcome]:
        """Failed expectations of severity 'warning'."""
        return [r for r in self.results if not r.success and r.severity == "warning"]

    @property
    def passed(self) -> bool:
        """True when no critical expectation failed."""
        return not self.critical_failures

    def to_html(self, title: str = "Dataset validation", notes: list[str] | None = None) -> str:
        """The summary page (:func:`report_html`), with the data's ``notes`` (``Manifest.notes``)."""
        return report_html(self, title, notes)

    def outcome(self, check: str) -> ExpectationOutcome:
        """The outcome of the check named ``check`` (e.g. ``'imbalance_ratio'``)."""
        return next(r for r in self.results if r.check == check)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([asdict(r) for r in self.results], columns=list(ExpectationOutcome.__dataclass_fields__))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (numpy scalars converted)."""
        return json.loads(
            json.dumps(
                {
                    "passed": self.passed,
                    "n_critical_failures": len(self.critical_failures),
                    "n_warnings": len(self.warnings),
                    "results": [asdict(r) for r in self.results],
                    "label_conflicts": self.label_conflicts.to_dict(orient="records"),
                    "leaking_pairs": self.leaking_pairs.to_dict(orient="records"),
                    "bad_files": self.bad_files.to_dict(orient="records"),
                    "duplicate_groups": self.duplicate_groups.to_dict(orient="records"),
                    "confounders_by_class": self.confounders_by_class.to_dict(orient="records"),
                    "skin_tones": self.skin_tones.to_dict(orient="records"),
                    "confounder_evidence": [{"path": e.path, "kinds": list(e.kinds)} for e in self.evidence],
                    "quarantined": self.quarantined.to_dict(orient="records"),
                    "parent_version": self.parent_version,
                    "failed_before": list(self.failed_before),
                    "data_docs_index": str(self.data_docs_index) if self.data_docs_index else None,
                },
                default=_json_default,
            )
        )


# --------------------------------------------------------------------------- HTML summary
_COLOUR = {"PASS": "#1a7f37", "WARN": "#9a6700", "FAIL": "#cf222e"}
_STYLE = (
    "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1em}"
    "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;font-size:13px}th{background:#f3f3f3}"
)


def report_html(report: ValidationReport, title: str = "Dataset validation", notes: list[str] | None = None) -> str:
    """A self-contained HTML summary (no external assets, opens offline): one row per expectation with
    observed value, threshold and what it found (the first offending files with their reasons), then the
    files not used, the duplicate groups with their paths, the label conflicts and the leaking pairs,
    linking to the GX Data Docs site when it was built; after a quarantine, first what the parent version
    failed and the files set aside (every one, with reason and group); ``notes`` (what reading the data
    warned of that is not a bad file: hidden folders of images, a misnamed format, appended data) come
    after the files not used. Every value is HTML-escaped."""
    rows = []
    for r in report.results:
        mark = "PASS" if r.success else ("FAIL" if r.severity == "critical" else "WARN")
        rows.append(
            f"<tr><td style='color:{_COLOUR[mark]};font-weight:bold'>{mark}</td><td>{_cell(r.suite)}</td>"
            f"<td>{_cell(r.check)}</td><td>{_cell(r.observed)}</td><td>{_cell(r.threshold)}</td>"
            f"<td>{_cell(r.severity)}</td><td><code>{_cell(r.expectation)}</code></td>"
            f"<td>{'<br>'.join(map(html.escape, details_lines(r.details)))}</td></tr>"
        )
    verdict = (
        "passed" if report.passed else f"{len(report.critical_failures)} critical failure(s)"
    ) + f", {len(report.warnings)} warning(s)"
    docs = (
        "<p>Full Great Expectations Data Docs: <a href='data_docs/index.html'>data_docs/index.html</a></p>"
        if report.data_docs_index
        else ""
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1><p><b>{verdict}</b></p>{docs}"
        f"{_quarantine_html(report)}"
        "<table><tr><th>result</th><th>suite</th><th>check</th><th>observed</th><th>threshold</th>"
        f"<th>severity</th><th>GX expectation</th><th>found</th></tr>{''.join(rows)}</table>"
        f"{_table(report.bad_files, 'Files not used')}{_notes_html(notes or [])}"
        f"{_table(report.duplicate_groups, 'Duplicate groups')}"
        f"{_table(report.confounders_by_class, 'Confounder kinds per class (images flagged)')}"
        f"{_evidence_html(report)}"
        f"{_table(report.skin_tones, 'Skin tone groups (ITA) per split and class')}"
        f"{_table(report.label_conflicts, 'Label conflicts')}{_table(report.leaking_pairs, 'Leaking pairs')}"
        "</body></html>"
    )


def _evidence_html(report: ValidationReport) -> str:
    """Each flagged image with the pixels that raised its flag painted over it (pen marks red,
    ruler yellow, text band magenta, drape cyan, dark background blue): a flag checked at a glance."""
    if not report.evidence:
        return ""
    cards = "".join(
        "<figure style='display:inline-block;margin:4px;width:200px;vertical-align:top;font-size:12px'>"
        + (f"<img src='{e.image}' alt='{html.escape(e.path)}' style='max-width:192px'>" if e.image else "")
        + f"<figcaption><b>{html.escape(', '.join(e.kinds))}</b><br>{html.escape(_printable(e.path))}</figcaption></figure>"
        for e in report.evidence
    )
    return (
        f"<h2>Confounder flags and their evidence ({len(report.evidence)} shown of {report.n_flagged} flagged)</h2>"
        "<p>Painted: pen marks red, ruler yellow, text band magenta, drape cyan, dark background blue.</p>"
        f"<div id='confounder-evidence'>{cards}</div>"
    )


def _notes_html(notes: list[str]) -> str:
    """The data's notes as a list; a note is printable text whatever a file name holds."""
    if not notes:
        return "<h2>Notes on the data (0)</h2><p>none</p>"
    items = "".join(f"<li>{html.escape(_printable(n))}</li>" for n in notes)
    return f"<h2>Notes on the data ({len(notes)})</h2><ul>{items}</ul>"


def _printable(text: str) -> str:
    """Control characters (a newline in a file name) shown escaped, so a name cannot forge a line."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)


def _quarantine_html(report: ValidationReport) -> str:
    """What a quarantine set aside, every file listed (nothing set aside is out of sight)."""
    if report.parent_version is None:
        return ""
    failed = ", ".join(report.failed_before) or "nothing"
    return (
        f"<h2>Quarantined ({len(report.quarantined)} files)</h2><p>Set aside from dataset version "
        f"{html.escape(report.parent_version)}, which failed: {html.escape(failed)}. The checks below ran on the "
        "files left; the files themselves are unchanged.</p>"
        f"{_table(report.quarantined, 'Quarantined files', limit=None)}"
    )


def _cell(v: Any) -> str:
    if isinstance(v, list):
        return "<br>".join(map(html.escape, bounded(v, MAX_PATHS)))
    text = f"{v:.4g}" if isinstance(v, float) else str(v)
    return html.escape(text if len(text) < 300 else text[:300] + "...")


def _table(df: pd.DataFrame, name: str, limit: int | None = MAX_LISTED) -> str:
    if df.empty:
        return f"<h2>{name}</h2><p>none</p>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    shown = df if limit is None else df.head(limit)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in shown.itertuples(index=False)
    )
    more = f"<p>... and {len(df) - len(shown)} more</p>" if len(df) > len(shown) else ""
    return f"<h2>{name} ({len(df)})</h2><table><tr>{head}</tr>{body}</table>{more}"


# --------------------------------------------------------------------------- text
def bounded(items: list[Any], limit: int) -> list[str]:
    """The first ``limit`` items as strings, then "... and N more" when there are more."""
    shown = [str(x) for x in items[:limit]]
    return shown + ([f"... and {len(items) - limit} more"] if len(items) > limit else [])


def details_lines(details: dict[str, Any]) -> list[str]:
    """What an outcome found, as lines for printing: the values per group (when given), then ``id: reason``
    (or the value) per example and how many more; else the rows of a summary table."""
    lines = []
    if details.get("values"):
        lines = [
            ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in details["values"].items())
        ]
    if details.get("examples"):
        lines += [f"{e['id']}: {e['reason'] or e['value']}" for e in details["examples"]]
        return lines + ([f"... and {details['n_more']} more"] if details.get("n_more") else [])
    if lines:
        return lines
    if details.get("rows"):
        return [", ".join(map(str, details["rows"]))]
    return [f"exception: {details['exception']}"] if details.get("exception") else []


def plain(value: Any) -> Any:
    """A JSON-ready scalar: numpy scalars as Python ones, NaN as None."""
    value = value.item() if isinstance(value, np.generic) else value
    return None if isinstance(value, float) and not np.isfinite(value) else value


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float | np.floating) and not np.isfinite(obj):
        return None
    return str(obj)
