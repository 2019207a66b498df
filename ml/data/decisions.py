"""A person's label-review decisions (the ``decisions.csv`` that ``skinflow label-issues`` writes and
the user edits) turned into a new dataset version: relabelled files keep their bytes and path and
get the new label, dropped files are set aside with the reviewer's reason, every other file is as it
was. Originals are never touched; the new version records its parent and the decisions it applied.

A decisions file has one row per reviewed image: ``path`` (as the manifest names it), ``given_label``
(the label it had when reviewed), ``decision`` (``keep``, ``relabel``, ``drop``, or empty: not decided,
kept), ``new_label`` (for ``relabel``: a class of the data), ``who`` and ``why`` (free text, recorded).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pandas as pd

from ml.data.manifest import QUARANTINE_COLUMNS, Manifest
from ml.data.versions import build_version

DECISIONS = ("keep", "relabel", "drop")
DECISION_COLUMNS = ["path", "given_label", "decision", "new_label", "who", "why"]
DECIDED_MANIFEST, DECISIONS_CSV = "manifest.csv", "decisions.csv"
DROP_REASON = "label_review_drop"


class DecisionError(ValueError):
    """A decisions file that cannot be applied to this data; the message names the row."""


def read_decisions(path: str | Path) -> pd.DataFrame:
    """The decisions of ``path`` (CSV), checked for columns and values; blank cells are empty strings."""
    path = Path(path)
    if not path.is_file():
        raise DecisionError(f"decisions file {path} does not exist")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DecisionError(f"{path}: not a readable CSV ({exc})") from exc
    missing = [c for c in ("path", "given_label", "decision", "new_label") if c not in table.columns]
    if missing:
        raise DecisionError(f"{path}: missing column(s) {missing}; expected {', '.join(DECISION_COLUMNS)}")
    for col in ("who", "why"):
        if col not in table.columns:
            table[col] = ""
    table["decision"] = table["decision"].str.strip().str.lower()
    for line, (decision, new_label) in enumerate(zip(table["decision"], table["new_label"], strict=True), start=2):
        if decision and decision not in DECISIONS:
            raise DecisionError(f"{path} line {line}: decision '{decision}' is not one of {', '.join(DECISIONS)}")
        if decision == "relabel" and not new_label.strip():
            raise DecisionError(f"{path} line {line}: relabel without a new_label")
    repeated = table["path"][table["path"].duplicated()]
    if len(repeated):
        raise DecisionError(f"{path}: {repeated.iloc[0]} is decided more than once")
    return table[DECISION_COLUMNS].reset_index(drop=True)


def apply_decisions(manifest: Manifest, decisions: pd.DataFrame, origin: str = "decisions") -> Manifest:
    """A new version of ``manifest`` with ``decisions`` applied (``parent_version`` is ``manifest``'s;
    dropped files are listed in ``quarantined`` with reason :data:`DROP_REASON`). Raises
    :class:`DecisionError` for a path the manifest does not hold, a ``given_label`` that is not the
    file's label now (decisions made on another version), or a new label that is not a class."""
    labels = dict(zip(manifest.records["path"], manifest.records["label"], strict=True))
    classes = set(manifest.expected_classes)
    for row in decisions.itertuples(index=False):
        if row.path not in labels:
            raise DecisionError(f"{origin}: {row.path} is not an image of {manifest.source}")
        if row.given_label and row.given_label != labels[row.path]:
            raise DecisionError(
                f"{origin}: {row.path} is labelled {labels[row.path]} now, not {row.given_label}: "
                "the decisions were made on another version of the data"
            )
        if row.decision == "relabel" and row.new_label not in classes:
            raise DecisionError(f"{origin}: {row.path}: new_label '{row.new_label}' is not a class ({', '.join(sorted(classes))})")
    drops = decisions[decisions["decision"] == "drop"]
    records = manifest.records.set_index("path")
    aside = pd.DataFrame(
        {
            "path": drops["path"],
            "label": drops["path"].map(labels),
            "split": drops["path"].map(records["split"]),
            "reason": DROP_REASON,
            "group": drops["path"],
            "note": [f"{w or 'unnamed reviewer'}: {y}" if y else (w or "") for w, y in zip(drops["who"], drops["why"], strict=True)],
        },
        columns=QUARANTINE_COLUMNS,
    )
    derived = manifest.set_aside(aside)
    relabel = decisions[decisions["decision"] == "relabel"].set_index("path")["new_label"]
    new_records = derived.records.copy()
    moved = new_records["path"].isin(relabel.index)
    new_records.loc[moved, "label"] = new_records.loc[moved, "path"].map(relabel)
    return replace(derived, records=new_records, classes=sorted(new_records["label"].unique()))


def decisions_key(manifest: Manifest, decisions: pd.DataFrame) -> str:
    """16 hex digits naming one application of one decisions table to one manifest version."""
    rows = sorted(map(list, decisions[["path", "decision", "new_label"]].itertuples(index=False, name=None)))
    return hashlib.sha256(json.dumps({"parent": manifest.version, "decisions": rows}).encode()).hexdigest()[:16]


def write_decided_version(derived: Manifest, decisions: pd.DataFrame, dest: str | Path) -> tuple[Path, bool]:
    """The version ``derived`` at ``dest`` (its manifest, sidecar and the decisions it applied, with
    who and why), written atomically; a complete ``dest`` is reused. Returns its manifest path and
    whether this call wrote it."""

    def build(tmp: Path) -> None:
        derived.save(tmp / DECIDED_MANIFEST)
        decisions.to_csv(tmp / DECISIONS_CSV, index=False)

    wrote = build_version(dest, DECIDED_MANIFEST, build, kind="label-review dataset")
    return Path(dest).resolve() / DECIDED_MANIFEST, wrote


def counts(decisions: pd.DataFrame) -> dict[str, int]:
    """How many rows of each decision (``undecided`` for blank ones)."""
    return {d or "undecided": int(n) for d, n in decisions["decision"].value_counts().items()}
