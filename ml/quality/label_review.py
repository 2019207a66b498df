"""What a person reviews after ``skinflow label-issues``: a page that opens offline (every image
embedded) with each flagged image, its given and suggested label, score and reason, the confused
label pairs; and the decisions file they fill in (:mod:`ml.data.decisions` applies it)."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping
from html import escape

import numpy as np
import pandas as pd
from PIL import Image

from ml.data.decisions import DECISION_COLUMNS

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
.card{display:inline-block;width:220px;margin:6px;padding:6px;border:1px solid #ccc;vertical-align:top;font-size:13px}
.card img{width:208px;height:208px;object-fit:contain;background:#eee;display:block}
.given{color:#a00}.suggested{color:#070}.reason{color:#555}
"""


def decisions_template(issues: pd.DataFrame) -> pd.DataFrame:
    """One row per flagged image for a person to decide: ``decision`` empty (keep, relabel or drop),
    ``new_label`` pre-filled with the suggested label, ``who``/``why`` empty; score and reason kept
    beside them to decide with."""
    table = pd.DataFrame(
        {
            "path": issues["path"],
            "given_label": issues["given_label"],
            "decision": "",
            "new_label": issues["suggested_label"],
            "who": "",
            "why": "",
        },
        columns=DECISION_COLUMNS,
    )
    return table.assign(score=issues["score"].round(4), reason=issues["reason"])


def thumbnail_uri(image: np.ndarray) -> str:
    """A uint8 HWC image as a ``data:`` PNG URI (the page needs no file beside it)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def review_page(issues: pd.DataFrame, thumbs: Mapping[str, str], noise: pd.DataFrame, title: str, method: str) -> str:
    """The review page: a summary, the confused pairs (``noise``, :func:`~ml.quality.label_issues.noise_table`),
    then one card per flagged image (``thumbs``: path -> data URI) in ``issues`` order. Every name is escaped."""
    by_reason = issues["reason"].str.split(";").explode().value_counts() if len(issues) else pd.Series(dtype=int)
    summary = ", ".join(f"{escape(str(r))}: {int(n)}" for r, n in by_reason.items()) or "none"
    pairs = "".join(
        f"<tr><td>{escape(r.given_label)}</td><td>{escape(r.true_label)}</td><td>{r.share:.3f}</td><td>{r.images}</td></tr>"
        for r in noise.itertuples(index=False)
    )
    cards = "".join(
        f'<div class="card"><img alt="{escape(r.path)}" src="{thumbs.get(r.path, "")}">'
        f'<div class="given">given: {escape(r.given_label)}</div>'
        f'<div class="suggested">suggested: {escape(r.suggested_label)}</div>'
        f"<div>score {r.score:.3f}</div>"
        f'<div class="reason">{escape(r.reason)}</div>'
        f'<div title="{escape(r.note)}">{escape(r.note[:160])}</div>'
        f"<div><code>{escape(r.path)}</code></div></div>"
        for r in issues.itertuples(index=False)
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{escape(title)}</h1><p>{escape(method)}</p>"
        f"<h2>Flagged images ({len(issues)})</h2><p>By reason: {summary}. Decide each in decisions.csv "
        "(keep, relabel with new_label, or drop; who and why are recorded), then "
        "<code>skinflow data apply-decisions</code>.</p>"
        f"<h2>Confused label pairs</h2><table><tr><th>given label</th><th>true label (estimated)</th>"
        f"<th>share of the set</th><th>images</th></tr>{pairs}</table>"
        f"<h2>Images</h2>{cards}</body></html>"
    )
