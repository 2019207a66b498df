"""Quarantine: a validation finding that names files sets them aside into a new dataset version
instead of stopping the loop, when the validation policy lists it under ``quarantine``.

What is quarantinable (:data:`QUARANTINABLE`): findings that name files, where setting those files
aside is a remedy that leaves the rest of the set sound:

* ``label_conflicts``: the same picture (identical bytes, or identical decoded pixels under other
  metadata) under two or more labels. Which label is right is unknown,
  so every copy of the group goes: the usable ones and the copies the manifest or the split left
  out already (a held-out copy whose training twin the split left out carries the same doubtful
  label). ``group`` is the content they share.
* the integrity findings that name files: ``decodes``, ``bytes_positive``, ``labels_known`` (files
  the manifest leaves out already: quarantine lists them and lets the rest through) and
  ``mode_allowed``, ``format_allowed``, ``min_side`` (files training would otherwise get); each file
  is its own group (its content).

* ``small_classes`` (off unless listed, and applied after the findings above): every file of a class
  the quarantine left with fewer usable images than ``class_balance.min_per_class``. The new version
  no longer has that class, so a model trained on it cannot predict it: a team's decision (on
  isic9, 78 of the 80 seborrheic keratosis files are copies of melanoma pictures), not a default.

Not quarantinable: the class balance checks, the confounder shares and associations, cross-split
leakage and the within-split duplicate share. They measure the whole set; removing the files they
count would hide the finding (a shortcut, a skew, a wrong split) rather than fix it.

The procedure, on a manifest, its features and the report of its validation:
:func:`files_to_quarantine` names the files (:data:`ml.data.manifest.QUARANTINE_COLUMNS`),
:meth:`ml.data.manifest.Manifest.set_aside` derives the new version (the parent's version recorded
in it), :func:`write_version` writes it once and atomically (:func:`ml.data.versions.build_version`:
``manifest.csv`` + ``manifest.json``, loadable with :meth:`~ml.data.manifest.Manifest.load`, and
``quarantine.csv``) and :func:`quarantine` does the three and returns a :class:`Quarantine`, whose
``features`` are the parent's features without the files set aside: what the validation checks again.
The image files are only read, never moved, changed or deleted.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from ml.data.manifest import QUARANTINE_COLUMNS, Manifest
from ml.data.versions import build_version
from ml.quality.features import usable_mask
from ml.quality.report import ValidationReport
from ml.quality.tables import content_key, file_problems

QUARANTINABLE: dict[str, str] = {
    "label_conflicts": "the same picture (identical bytes, or identical pixels under other metadata) under two or more labels; every copy of the group",
    "decodes": "files that do not decode (left out by the manifest already)",
    "bytes_positive": "empty files (left out by the manifest already)",
    "labels_known": "files whose label is not a class of the data (left out by the manifest already)",
    "mode_allowed": "images in a colour mode the loader does not convert",
    "format_allowed": "images in a format the policy does not allow",
    "min_side": "images smaller than the policy's minimum side",
    "small_classes": (
        "every file of a class left with fewer than class_balance.min_per_class usable images once the "
        "findings listed before it are set aside; the class leaves the version (the model will not know it)"
    ),
}
"""The findings (check names) a policy may quarantine, with what each sets aside."""
VERSION_MANIFEST = "manifest.csv"
"""The manifest of a quarantined version (with its ``.json`` sidecar): the file that marks it complete."""
QUARANTINE_CSV = "quarantine.csv"
"""The files a quarantined version set aside (:data:`ml.data.manifest.QUARANTINE_COLUMNS`)."""


def quarantined_findings(policy: dict[str, Any]) -> list[str]:
    """The findings the validation ``policy`` quarantines (its ``quarantine`` list, in order, once each).
    Raises ValueError for a value that is not a list of names of :data:`QUARANTINABLE`."""
    names = policy.get("quarantine")
    if names is None:
        return []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"validation policy key 'quarantine' must be a list of finding names, got {names!r}")
    unknown = [n for n in names if n not in QUARANTINABLE]
    if unknown:
        raise ValueError(
            f"validation policy key 'quarantine': {', '.join(map(repr, unknown))} cannot be quarantined "
            f"(quarantinable: {', '.join(QUARANTINABLE)})"
        )
    return list(dict.fromkeys(names))


def files_to_quarantine(features: pd.DataFrame, report: ValidationReport, policy: dict[str, Any]) -> pd.DataFrame:
    """The files the quarantined findings of ``policy`` name in ``features`` (the table ``report`` was
    computed from): one row per file (:data:`~ml.data.manifest.QUARANTINE_COLUMNS`), ``reason`` the
    findings that named it (``;``-joined), sorted by group and path. Empty when nothing is quarantined."""
    features = features.reset_index(drop=True)
    parts = []
    findings = quarantined_findings(policy)
    for finding in findings:
        if finding == "label_conflicts":
            parts.append(_label_conflicts(features))
        elif finding != "small_classes":
            parts.append(_named(features, finding, report))
    if "small_classes" in findings:
        so_far = pd.concat([p for p in parts if len(p)] or [pd.DataFrame(columns=QUARANTINE_COLUMNS)])
        parts.append(_small_classes(remaining(features, so_far), int(policy["class_balance"]["min_per_class"])))
    rows = [p for p in parts if len(p)]
    if not rows:
        return pd.DataFrame(columns=QUARANTINE_COLUMNS)
    table = pd.concat(rows, ignore_index=True)
    joined = table.groupby("path", sort=False).agg(
        label=("label", "first"),
        split=("split", "first"),
        reason=("reason", ";".join),
        group=("group", "first"),
        note=("note", "; ".join),
    )
    return joined.reset_index()[QUARANTINE_COLUMNS].sort_values(["group", "path"], ignore_index=True)


def _rows(
    features: pd.DataFrame, mask: pd.Series, reason: str, notes: pd.Series, group: pd.Series | None = None
) -> pd.DataFrame:
    """The quarantine rows of ``features[mask]``; ``group`` (default: the bytes' digest) is what they share."""
    chosen = features[mask]
    group = features["sha256"] if group is None else group
    split = chosen["split"] if "split" in chosen else pd.Series("", index=chosen.index)
    return pd.DataFrame(
        {
            "path": chosen["path"].astype(str),
            "label": chosen["label"].fillna("").astype(str),
            "split": split.fillna("").astype(str),
            "reason": reason,
            "group": group[mask].fillna("").astype(str).str[:12],
            "note": notes[mask].astype(str),
        },
        columns=QUARANTINE_COLUMNS,
    )


def _label_conflicts(features: pd.DataFrame) -> pd.DataFrame:
    """Every decoded copy of content that carries two or more labels of the data (the labels of usable
    files: an unlabelled or unmapped copy is no second label), usable or left out."""
    decoded = features["decode_ok"].fillna(False).astype(bool)
    labels = set(features.loc[usable_mask(features), "label"].astype(str))
    labelled = decoded & features["label"].astype(str).isin(labels)
    content = content_key(features)
    per_content = features[labelled].groupby(content[labelled])["label"].agg(lambda s: sorted(set(s.astype(str))))
    conflicting = per_content[per_content.map(len) > 1]
    member = decoded & content.isin(conflicting.index)
    left_out = file_problems(features)
    notes = pd.Series(
        [
            f"the same picture under {', '.join(conflicting.get(key, []))}"
            + (f" (left out already: {why})" if why else "")
            for key, why in zip(content, left_out, strict=True)
        ],
        index=features.index,
    )
    return _rows(features, member, "label_conflicts", notes, content)


def _small_classes(features: pd.DataFrame, min_per_class: int) -> pd.DataFrame:
    """Every file (usable or not) of a label with fewer than ``min_per_class`` usable files in ``features``."""
    usable = features[usable_mask(features)]
    counts = usable["label"].astype(str).value_counts()
    labels = features["label"].fillna("").astype(str)
    small = {c for c in labels.unique() if c and counts.get(c, 0) < min_per_class}
    notes = labels.map(lambda c: f"{c}: {counts.get(c, 0)} usable image(s) left < min_per_class {min_per_class}")
    return _rows(features, labels.isin(small), "small_classes", notes)


def dropped_classes(files: pd.DataFrame) -> list[str]:
    """The classes a quarantine took out whole (``small_classes``)."""
    mask = files["reason"].astype(str).str.split(";").map(lambda r: "small_classes" in r)
    return sorted(set(files.loc[mask, "label"].astype(str)))


def small_class_hint(failures: list[str], files: pd.DataFrame) -> str:
    """After a quarantine (``files``) that left a class too small (a ``min_per_class`` failure) and
    did not take one out whole: the policy entry that does, as a clause for the error line."""
    if not any(f.endswith(":min_per_class") for f in failures) or dropped_classes(files):
        return ""
    return (
        "; a class the quarantine left too small can be set aside whole, if the model may do without it: "
        "add small_classes to the validation policy's quarantine list"
    )


def _named(features: pd.DataFrame, finding: str, report: ValidationReport) -> pd.DataFrame:
    """The rows (by path) an integrity check named, with what it found in each."""
    paths = set(map(str, report.unexpected.get(finding) or []))
    mask = features["path"].astype(str).isin(paths)
    column = next((r.column for r in report.results if r.check == finding), None)
    if column == "min_side":  # the check reads the smaller of the displayed sides
        values = features[["width", "height"]].min(axis=1)
    else:
        values = features[column] if column in features else pd.Series(None, index=features.index)
    shown = values.map(lambda v: f"{v:g}" if isinstance(v, float) else str(v))
    notes = file_problems(features).where(lambda why: why != "", f"{column}=" + shown)
    return _rows(features, mask, finding, notes)


def remaining(features: pd.DataFrame, files: pd.DataFrame) -> pd.DataFrame:
    """``features`` without the rows of ``files`` (by path): the table the data left is validated on."""
    return features[~features["path"].astype(str).isin(set(files["path"]))].reset_index(drop=True)


def quarantine_key(manifest: Manifest, files: pd.DataFrame) -> str:
    """16 hex digits naming one quarantine of one manifest: the parent's version, its files left out
    (with reasons) and the files set aside (with reasons), so that a folder holds one request's output."""
    payload = {
        "parent": manifest.version,
        "bad": sorted(map(list, manifest.bad[["path", "reason"]].astype(str).itertuples(index=False, name=None))),
        "files": sorted(map(list, files[["path", "reason"]].astype(str).itertuples(index=False, name=None))),
    }
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:16]


def write_version(derived: Manifest, dest: str | Path) -> tuple[Path, bool]:
    """Write the derived manifest ``derived`` (from :meth:`~ml.data.manifest.Manifest.set_aside`) into
    the new folder ``dest``: :data:`VERSION_MANIFEST` with its sidecar and :data:`QUARANTINE_CSV`, built
    beside it and renamed into place. A complete ``dest`` is reused as it is. Returns the manifest's
    path and whether this call wrote it."""
    if derived.quarantined is None:
        raise ValueError("not a derived manifest: set files aside first (Manifest.set_aside)")

    def build(tmp: Path) -> None:
        derived.save(tmp / VERSION_MANIFEST)
        derived.quarantined.to_csv(tmp / QUARANTINE_CSV, index=False)

    wrote = build_version(dest, VERSION_MANIFEST, build, kind="quarantined dataset")
    return Path(dest).resolve() / VERSION_MANIFEST, wrote


@dataclass
class Quarantine:
    """A quarantine done: the parent version and what it failed, the files set aside, the new version
    (``manifest``, written at ``manifest_path``), the features of the files left and the classes the
    data must still have (the parent's: a class that loses every file fails the check again)."""

    parent_version: str
    failed_before: list[str]
    files: pd.DataFrame
    manifest: Manifest
    manifest_path: Path
    features: pd.DataFrame
    expected_classes: list[str]

    @property
    def csv_path(self) -> Path:
        return self.manifest_path.with_name(QUARANTINE_CSV)

    def line(self) -> str:
        """One line: how many files, for which findings, in how many groups, and the versions."""
        reasons = self.files["reason"].str.split(";").explode().value_counts()
        why = ", ".join(f"{r}" if n == len(self.files) else f"{r}: {n}" for r, n in reasons.items())
        groups = self.files["group"].nunique()
        version = self.manifest.version
        lineage = (
            f"dataset version {version} from {self.parent_version}"
            if version != self.parent_version
            else f"dataset version {version} (its usable files unchanged: only files left out already were set aside)"
        )
        return f"{len(self.files)} files ({why}) in {groups} groups set aside: {lineage}"

    def summary(self) -> dict[str, Any]:
        """JSON-ready: the line, counts, versions, where the version and the list are, every file."""
        return {
            "summary": self.line(),
            "files": len(self.files),
            "groups": int(self.files["group"].nunique()),
            "by_reason": {
                str(r): int(n) for r, n in self.files["reason"].str.split(";").explode().value_counts().items()
            },
            "parent_dataset_version": self.parent_version,
            "dataset_version": self.manifest.version,
            "failed_before": list(self.failed_before),
            "manifest": str(self.manifest_path),
            "csv": str(self.csv_path),
            "rows": self.files.to_dict(orient="records"),
        }

    def annotate(self, report: ValidationReport) -> ValidationReport:
        """``report`` (of the files left) naming the files set aside and what the parent failed."""
        return replace(
            report, quarantined=self.files, parent_version=self.parent_version, failed_before=self.failed_before
        )


def quarantine(
    manifest: Manifest,
    features: pd.DataFrame,
    report: ValidationReport,
    policy: dict[str, Any],
    versions_dir: str | Path,
) -> Quarantine | None:
    """Set aside the files the quarantined findings of ``policy`` name (:func:`files_to_quarantine`)
    into a new version of ``manifest`` under ``versions_dir/<quarantine key>/`` (:func:`write_version`).
    None when nothing is to be set aside (the policy quarantines nothing, or nothing was found)."""
    files = files_to_quarantine(features, report, policy)
    if files.empty:
        return None
    derived = manifest.set_aside(files)
    path, _ = write_version(derived, Path(versions_dir) / quarantine_key(manifest, files))
    return Quarantine(
        parent_version=manifest.version,
        failed_before=[f"{r.suite}:{r.check}" for r in report.critical_failures],
        files=files,
        manifest=derived,
        manifest_path=path,
        features=remaining(features, files),
        # a class taken out whole (small_classes) is no longer expected; one that lost its files otherwise is
        expected_classes=[c for c in manifest.expected_classes if c not in dropped_classes(files)],
    )
