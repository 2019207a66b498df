"""Great Expectations suites over the features table (:mod:`ml.quality.features`) and tables derived from it.

One suite per concern, thresholds from ``policies/validation.yaml``:

* ``integrity``: files decode, original mode allowed, min side, format, bytes > 0, labels known;
* ``class_balance`` (usable images only: decoded and not left out by the manifest): every class of
  ``classes`` present, at least ``min_classes`` classes, min images per class, max/min ratio, KL
  divergence from the expected priors;
* ``confounders``: share of pen-marked images (``confounder_flag``) per class, the share of each
  acquisition artefact kind (rulers, text bands, drapes, dark backgrounds:
  :data:`ml.quality.features.ACQUISITION_KINDS`) per class as checks of their own, so that a set of
  clinical photographs on blue drapes does not read as pen-marked, and Cramér's V between the label
  and every metadata column and flag present (a custom GX expectation, :class:`ExpectColumnPairCramersVToBeLessThan`);
* ``duplicates_leakage``: no identical bytes under two labels, no exact or near duplicate across
  splits, few duplicates within a split.

GX binds one suite to one table, so a concern that reads two tables runs as two GX suites named
``<concern>.<table>``; outcomes carry the concern. ``observed`` is GX's ``observed_value`` or, for
row-wise expectations (which have none), the number of unexpected rows; ``details`` lists the
offending ids (row-wise: ``unexpected``, and ``examples``, the first :data:`MAX_EXAMPLES` as
``{id, value, reason}`` with ``n_more`` the rest) or the derived table's values (aggregates).
The report also names every file not used (``bad_files``) and every duplicate group with its
paths (``duplicate_groups``); the within-split and cross-split checks name the groups they count
(``details['examples']``, one per group: its paths). ``confounders_by_class`` counts each confounder
kind per class. Duplicate, leakage and balance tables are computed on usable rows.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import great_expectations as gx
import great_expectations.expectations as gxe
import numpy as np
import pandas as pd
from great_expectations.core.metric_domain_types import MetricDomainTypes
from great_expectations.data_context.types.base import ProgressBarsConfig
from great_expectations.execution_engine import PandasExecutionEngine
from great_expectations.expectations.expectation import BatchExpectation
from great_expectations.expectations.metrics.metric_provider import metric_value
from great_expectations.expectations.metrics.table_metric_provider import TableMetricProvider
from scipy.stats.contingency import association

from ml.data.duplicates import groups_from_pairs, hash_array, near_pairs
from ml.policies import load_policy as _load_policy
from ml.quality.features import ACQUISITION_KINDS, usable_mask

SEVERITIES = ("critical", "warning")
_MAX_DETAILS = 50
MAX_EXAMPLES = 20
"""How many offending rows an outcome names with their value and reason (``details['examples']``)."""
BAD_FILE_COLUMNS = ["path", "label", "reason"]
DUPLICATE_GROUP_COLUMNS = ["group", "kind", "n", "paths", "labels", "splits"]
DEFAULT_MIN_CLASSES = 2
MAX_LISTED = 50
"""How many rows of a table (files not used, duplicate groups...) the HTML summary shows before "and N more"."""
MAX_PATHS = 8
"""How many paths of one duplicate group a line or cell shows before "and N more"."""
CONFOUNDER_KINDS = ("pen_mark", *ACQUISITION_KINDS)
_KIND_FLAGS = dict(zip(CONFOUNDER_KINDS, ("confounder_flag", *(f"{k}_flag" for k in ACQUISITION_KINDS)), strict=True))


# --------------------------------------------------------------------------- custom expectation
class TableColumnPairCramersV(TableMetricProvider):
    """Bias-corrected Cramér's V between two categorical columns (0: independent, 1: one determines
    the other); see :func:`cramers_v`."""

    metric_name = "skinflow.table.column_pair_cramers_v"
    value_keys = ("column_A", "column_B", "bias_correction")

    @metric_value(engine=PandasExecutionEngine)
    def _pandas(
        cls,
        execution_engine: PandasExecutionEngine,
        metric_domain_kwargs: dict,
        metric_value_kwargs: dict,
        metrics: dict[str, Any],
        runtime_configuration: dict,
    ) -> float:
        df, _, _ = execution_engine.get_compute_domain(metric_domain_kwargs, domain_type=MetricDomainTypes.TABLE)
        kw = metric_value_kwargs
        return cramers_v(df[kw["column_A"]], df[kw["column_B"]], bool(kw["bias_correction"]))


class ExpectColumnPairCramersVToBeLessThan(BatchExpectation):
    """Expect the association (Cramér's V) between ``column_A`` and ``column_B`` to be below ``threshold``."""

    column_A: str
    column_B: str
    threshold: float
    bias_correction: bool = True

    metric_dependencies: ClassVar[tuple[str, ...]] = (TableColumnPairCramersV.metric_name,)
    success_keys: ClassVar[tuple[str, ...]] = ("column_A", "column_B", "threshold", "bias_correction")

    def _validate(
        self,
        metrics: dict,
        runtime_configuration: dict | None = None,
        execution_engine: Any = None,
    ) -> dict[str, Any]:
        observed = float(metrics[TableColumnPairCramersV.metric_name])
        return {"success": observed < self.threshold, "result": {"observed_value": observed}}


def cramers_v(a: pd.Series, b: pd.Series, bias_correction: bool = True) -> float:
    """Cramér's V of two categorical series (missing values are a category); 0 for a single level.

    With ``bias_correction`` (Bergsma 2013) the chance association of small samples is removed:
    plain V of one flagged image among 60 in 10 classes is ~0.39, corrected ~0.
    """
    table = pd.crosstab(a.astype(str), b.astype(str)).to_numpy()
    if min(table.shape) < 2:
        return 0.0
    v = float(association(table, method="cramer"))
    if not bias_correction:
        return v
    n, (r, k) = table.sum(), table.shape
    phi2 = max(0.0, v**2 * min(r - 1, k - 1) - (r - 1) * (k - 1) / (n - 1))
    r_c, k_c = r - (r - 1) ** 2 / (n - 1), k - (k - 1) ** 2 / (n - 1)
    return float(np.sqrt(phi2 / min(r_c - 1, k_c - 1)))


# --------------------------------------------------------------------------- report
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
    """All outcomes of :func:`validate_features` plus the derived duplicate tables."""

    results: list[ExpectationOutcome]
    label_conflicts: pd.DataFrame
    leaking_pairs: pd.DataFrame
    data_docs_index: Path | None = None
    bad_files: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=BAD_FILE_COLUMNS))
    duplicate_groups: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=DUPLICATE_GROUP_COLUMNS))
    confounders_by_class: pd.DataFrame = field(default_factory=pd.DataFrame)

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

    def to_html(self, title: str = "Dataset validation") -> str:
        """A self-contained HTML summary (no external assets, opens offline): one row per
        expectation with observed value, threshold and what it found (the first offending files
        with their reasons), then the files not used, the duplicate groups with their paths, the
        label conflicts and the leaking pairs, linking to the GX Data Docs site when it was built."""
        import html

        def cell(v: Any) -> str:
            if isinstance(v, list):
                return "<br>".join(map(html.escape, bounded(v, MAX_PATHS)))
            text = f"{v:.4g}" if isinstance(v, float) else str(v)
            return html.escape(text if len(text) < 300 else text[:300] + "...")

        colour = {"PASS": "#1a7f37", "WARN": "#9a6700", "FAIL": "#cf222e"}
        rows = []
        for r in self.results:
            mark = "PASS" if r.success else ("FAIL" if r.severity == "critical" else "WARN")
            rows.append(
                f"<tr><td style='color:{colour[mark]};font-weight:bold'>{mark}</td><td>{cell(r.suite)}</td>"
                f"<td>{cell(r.check)}</td><td>{cell(r.observed)}</td><td>{cell(r.threshold)}</td>"
                f"<td>{cell(r.severity)}</td><td><code>{cell(r.expectation)}</code></td>"
                f"<td>{'<br>'.join(map(html.escape, details_lines(r.details)))}</td></tr>"
            )
        verdict = (
            "passed" if self.passed else f"{len(self.critical_failures)} critical failure(s)"
        ) + f", {len(self.warnings)} warning(s)"
        docs = (
            "<p>Full Great Expectations Data Docs: <a href='data_docs/index.html'>data_docs/index.html</a></p>"
            if self.data_docs_index
            else ""
        )

        def table(df: pd.DataFrame, name: str) -> str:
            if df.empty:
                return f"<h2>{name}</h2><p>none</p>"
            head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
            body = "".join(
                "<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>"
                for row in df.head(MAX_LISTED).itertuples(index=False)
            )
            more = f"<p>... and {len(df) - MAX_LISTED} more</p>" if len(df) > MAX_LISTED else ""
            return f"<h2>{name} ({len(df)})</h2><table><tr>{head}</tr>{body}</table>{more}"

        style = (
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1em}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;font-size:13px}th{background:#f3f3f3}"
        )
        return (
            f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1><p><b>{verdict}</b></p>{docs}"
            "<table><tr><th>result</th><th>suite</th><th>check</th><th>observed</th><th>threshold</th>"
            f"<th>severity</th><th>GX expectation</th><th>found</th></tr>{''.join(rows)}</table>"
            f"{table(self.bad_files, 'Files not used')}{table(self.duplicate_groups, 'Duplicate groups')}"
            f"{table(self.confounders_by_class, 'Confounder kinds per class (images flagged)')}"
            f"{table(self.label_conflicts, 'Label conflicts')}{table(self.leaking_pairs, 'Leaking pairs')}"
            "</body></html>"
        )

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
                    "data_docs_index": str(self.data_docs_index) if self.data_docs_index else None,
                },
                default=_json_default,
            )
        )


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


def _plain(value: Any) -> Any:
    """A JSON-ready scalar: numpy scalars as Python ones, NaN as None."""
    value = value.item() if isinstance(value, np.generic) else value
    return None if isinstance(value, float) and not np.isfinite(value) else value


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float | np.floating) and not np.isfinite(obj):
        return None
    return str(obj)


# --------------------------------------------------------------------------- policy
def load_policy(path: str | Path | None = None) -> dict[str, Any]:
    """The validation policy at ``path`` (default: ``validation.yaml`` in the settings'
    ``policies_dir``), with every key of the shipped ``policies/validation.yaml`` and no other
    (:func:`ml.policies.load_policy`; mistakes are ``PolicyError``)."""
    return _load_policy("validation", path)


# --------------------------------------------------------------------------- derived tables
def file_problems(features: pd.DataFrame) -> pd.Series:
    """Why each row is not used: the manifest's ``left_out`` reason, else the decode ``reason`` ('' when used)."""
    reason = features["reason"].fillna("").astype(str)
    if "left_out" not in features:
        return reason
    left_out = features["left_out"].fillna("").astype(str)
    return left_out.where(left_out != "", reason)


def bad_files_table(features: pd.DataFrame) -> pd.DataFrame:
    """The rows that will not be used (:func:`ml.quality.features.usable_mask`), with their reasons."""
    unused = ~usable_mask(features)
    return features.loc[unused, ["path", "label"]].assign(reason=file_problems(features)[unused]).reset_index(drop=True)


def duplicate_pairs(features: pd.DataFrame, max_distance: int) -> pd.DataFrame:
    """Pairs of decoded images whose pHash Hamming distance is <= ``max_distance``
    (:func:`ml.data.duplicates.near_pairs`, the search the split uses too).

    Identical bytes decode identically, so exact duplicates are the distance-0 pairs with equal
    sha256. Columns: ``i``, ``j`` (row positions in ``features``, i < j), ``distance``, ``kind``
    ('exact' for identical sha256, else 'near').
    """
    ok = np.flatnonzero(features["decode_ok"].fillna(False).to_numpy(dtype=bool))
    a, b, dist = near_pairs(hash_array(features["phash"].to_numpy()[ok]), max_distance)
    sha = features["sha256"].to_numpy()[ok]
    return pd.DataFrame(
        {
            "i": ok[a].astype(int),
            "j": ok[b].astype(int),
            "distance": dist.astype(int),
            "kind": np.where(sha[a] == sha[b], "exact", "near"),
        },
        columns=["i", "j", "distance", "kind"],
    )


def _splits(features: pd.DataFrame) -> pd.Series:
    """The split of each row ('unsplit' when the column or the value is missing)."""
    if "split" not in features:
        return pd.Series("unsplit", index=features.index)
    return features["split"].fillna("unsplit").astype(str)


def leaking_pairs_table(features: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """Duplicate pairs whose members sit in different splits, with paths, splits and labels."""
    split = _splits(features).to_numpy()
    cross = pairs[split[pairs["i"]] != split[pairs["j"]]]
    cols = ["path", "label"]
    a = features.iloc[cross["i"]][cols].reset_index(drop=True).add_suffix("_a")
    b = features.iloc[cross["j"]][cols].reset_index(drop=True).add_suffix("_b")
    out = pd.concat([a, b], axis=1)
    out["split_a"], out["split_b"] = split[cross["i"]], split[cross["j"]]
    out["distance"], out["kind"] = cross["distance"].to_numpy(), cross["kind"].to_numpy()
    return out


def duplicate_groups_table(features: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """Every group of exact or near duplicates (connected through ``pairs``) with its paths, labels and splits;
    ``kind`` is 'exact' when all members have the same bytes."""
    group = groups_from_pairs(len(features), pairs["i"].to_numpy(), pairs["j"].to_numpy())
    split, rows = _splits(features), []
    for g in np.flatnonzero(np.bincount(group, minlength=1) > 1):
        members = features[group == g]
        rows.append(
            {
                "group": len(rows),
                "kind": "exact" if members["sha256"].nunique() == 1 else "near",
                "n": len(members),
                "paths": members["path"].astype(str).tolist(),
                "labels": sorted(set(members["label"].astype(str))),
                "splits": sorted(set(split[group == g])),
            }
        )
    return pd.DataFrame(rows, columns=DUPLICATE_GROUP_COLUMNS)


def within_split_duplicates(features: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """Per split: images, redundant copies (images minus duplicate groups) and their share."""
    split = _splits(features)
    same = pairs[split.to_numpy()[pairs["i"]] == split.to_numpy()[pairs["j"]]]
    group = groups_from_pairs(len(features), same["i"].to_numpy(), same["j"].to_numpy())
    table = pd.DataFrame({"split": split.to_numpy(), "group": group})
    out = table.groupby("split").agg(images=("group", "size"), groups=("group", "nunique")).reset_index()
    out["duplicates"] = out["images"] - out["groups"]
    out["duplicate_share"] = out["duplicates"] / out["images"]
    return out.drop(columns="groups")


def sha_groups(features: pd.DataFrame) -> pd.DataFrame:
    """Identical-bytes groups of decoded images with at least two members: size, labels, splits and
    ``members`` ('path [label]; ...')."""
    ok = features[features["decode_ok"].fillna(False).astype(bool)]
    named = ok.assign(split=_splits(ok), member=ok["path"].astype(str) + " [" + ok["label"].astype(str) + "]")
    groups = named.groupby("sha256").agg(
        n=("path", "size"), n_labels=("label", "nunique"), n_splits=("split", "nunique"), members=("member", "; ".join)
    )
    return groups[groups["n"] > 1].reset_index()


def label_conflicts_table(features: pd.DataFrame, groups: pd.DataFrame) -> pd.DataFrame:
    """Rows whose bytes also occur under another label."""
    bad = groups.loc[groups["n_labels"] > 1, "sha256"]
    rows = features[features["sha256"].isin(bad) & features["decode_ok"].fillna(False).astype(bool)]
    cols = ["sha256", "path", "label"] + (["split"] if "split" in features else [])
    return rows[cols].sort_values(["sha256", "label", "path"]).reset_index(drop=True)


def class_counts(features: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Usable images (:func:`ml.quality.features.usable_mask`) per label over the class map plus any unknown
    label; ratio of each count to the smallest."""
    used = features.loc[usable_mask(features), "label"]
    counts = used.value_counts().reindex(list(dict.fromkeys([*classes, *used])), fill_value=0)
    out = counts.rename_axis("label").rename("count").reset_index()
    smallest = out["count"].min()
    out["ratio_to_min"] = out["count"] / smallest if smallest > 0 else np.inf
    return out


def flagged_by_class(features: pd.DataFrame) -> pd.DataFrame:
    """Per label: images, pen-marked (``confounder_flag``) images and their share, and for each acquisition
    kind the share flagged (``<kind>_flagged_share``; 0 when the features table has no such flag)."""
    flags = features.assign(**{f"_{kind}": _flag(features, col) for kind, col in _KIND_FLAGS.items()})
    out = (
        flags.groupby("label")
        .agg(
            images=("path", "size"),
            flagged=("_pen_mark", "sum"),
            **{kind: (f"_{kind}", "sum") for kind in ACQUISITION_KINDS},
        )
        .reset_index()
    )
    out["flagged_share"] = out["flagged"] / out["images"]
    for kind in ACQUISITION_KINDS:
        out[f"{kind}_flagged_share"] = out.pop(kind) / out["images"]
    return out


def _flag(features: pd.DataFrame, column: str) -> pd.Series:
    if column not in features:
        return pd.Series(False, index=features.index)
    return features[column].fillna(False).astype(bool)


def confounders_by_class(features: pd.DataFrame) -> pd.DataFrame:
    """Per label: images and how many are flagged with each confounder kind (:data:`CONFOUNDER_KINDS`)."""
    flags = pd.DataFrame({kind: _flag(features, col) for kind, col in _KIND_FLAGS.items()})
    out = flags.groupby(features["label"].astype(str)).sum().astype(int)
    return (
        out.assign(images=features.groupby(features["label"].astype(str)).size())
        .rename_axis("label")
        .reset_index()[["label", "images", *CONFOUNDER_KINDS]]
    )


def _duplicate_examples(features: pd.DataFrame, pairs: pd.DataFrame, within: bool) -> dict[str, Any]:
    """The duplicate groups a check counts, one example each (``id`` names the group, ``reason`` its paths):
    groups inside one split (``within``) or groups spanning splits (leakage)."""
    split = _splits(features).to_numpy()
    same = split[pairs["i"]] == split[pairs["j"]]
    chosen = pairs[same] if within else pairs
    group = groups_from_pairs(len(features), chosen["i"].to_numpy(), chosen["j"].to_numpy())
    examples = []
    for g in np.flatnonzero(np.bincount(group, minlength=1) > 1):
        members = features[group == g]
        splits = sorted(set(split[group == g]))
        if not within and len(splits) < 2:
            continue
        kind = "exact" if members["sha256"].nunique() == 1 else "near"
        paths = [f"{p} [{s}]" for p, s in zip(members["path"].astype(str), split[group == g], strict=True)]
        examples.append(
            {
                "id": f"{kind} duplicates in {', '.join(splits)} ({len(members)} images)",
                "value": len(members),
                "reason": "; ".join(bounded(paths, MAX_PATHS)),
            }
        )
    return {"examples": examples[:MAX_EXAMPLES], "n_more": max(0, len(examples) - MAX_EXAMPLES)}


def _priors(classes: list[str], expected: dict[str, float] | None) -> list[float]:
    """Expected class shares in class-map order, normalised to sum to 1 (uniform when None)."""
    raw = np.array([1.0 if expected is None else float(expected.get(c, 0.0)) for c in classes])
    return list(raw / raw.sum())


# --------------------------------------------------------------------------- checks
@dataclass(frozen=True)
class _Check:
    """One expectation with its place in the report."""

    suite: str
    table: str
    name: str
    expectation: gxe.Expectation
    column: str | None
    threshold: Any
    severity: str


@dataclass(frozen=True)
class _Table:
    """A table to validate; ``id_column`` names its rows in details; ``summary`` marks small
    per-group tables whose values are copied into the details of aggregate expectations;
    ``note_column`` holds the reason shown with each offending row."""

    frame: pd.DataFrame
    id_column: str
    summary: bool = False
    note_column: str | None = None


def _integrity_checks(policy: dict[str, Any], classes: list[str]) -> list[_Check]:
    p, sev = policy["integrity"], policy["integrity"]["severity"]
    spec = [
        ("decodes", gxe.ExpectColumnValuesToBeInSet(column="decode_ok", value_set=[True]), "decode_ok", True),
        (
            "mode_allowed",
            gxe.ExpectColumnValuesToBeInSet(column="mode", value_set=p["allowed_modes"]),
            "mode",
            p["allowed_modes"],
        ),
        (
            "min_side",
            gxe.ExpectColumnValuesToBeBetween(column="min_side", min_value=p["min_side"]),
            "min_side",
            p["min_side"],
        ),
        (
            "format_allowed",
            gxe.ExpectColumnValuesToBeInSet(column="format", value_set=p["allowed_formats"]),
            "format",
            p["allowed_formats"],
        ),
        ("bytes_positive", gxe.ExpectColumnValuesToBeBetween(column="bytes", min_value=1), "bytes", 1),
        ("labels_known", gxe.ExpectColumnValuesToBeInSet(column="label", value_set=classes), "label", classes),
    ]
    return [_Check("integrity", "features", n, e, c, t, sev) for n, e, c, t in spec]


def _balance_checks(policy: dict[str, Any], classes: list[str]) -> list[_Check]:
    p, sev = policy["class_balance"], policy["class_balance"]["severity"]
    partition = {"values": list(classes), "weights": _priors(classes, p.get("expected_priors"))}
    kl = gxe.ExpectColumnKLDivergenceToBeLessThan(
        column="label", partition_object=partition, threshold=p["max_kl_divergence"]
    )
    min_classes = p.get("min_classes", DEFAULT_MIN_CLASSES)
    return [
        _Check(
            "class_balance",
            "class_counts",
            "classes_present",
            gxe.ExpectColumnValuesToBeBetween(column="count", min_value=1),
            "count",
            1,
            sev,
        ),
        _Check(
            "class_balance",
            "present_classes",
            "min_classes",
            gxe.ExpectTableRowCountToBeBetween(min_value=min_classes),
            None,
            min_classes,
            sev,
        ),
        _Check(
            "class_balance",
            "class_counts",
            "min_per_class",
            gxe.ExpectColumnMinToBeBetween(column="count", min_value=p["min_per_class"]),
            "count",
            p["min_per_class"],
            sev,
        ),
        _Check(
            "class_balance",
            "class_counts",
            "imbalance_ratio",
            gxe.ExpectColumnMaxToBeBetween(column="ratio_to_min", max_value=p["max_imbalance_ratio"]),
            "ratio_to_min",
            p["max_imbalance_ratio"],
            sev,
        ),
        _Check("class_balance", "usable", "kl_divergence", kl, "label", p["max_kl_divergence"], sev),
    ]


def _confounder_checks(policy: dict[str, Any], features: pd.DataFrame) -> list[_Check]:
    p, sev = policy["confounders"], policy["confounders"]["severity"]
    checks = [
        _Check(
            "confounders",
            "flagged_by_class",
            "flagged_share_per_class",
            gxe.ExpectColumnMaxToBeBetween(column="flagged_share", max_value=p["max_flagged_share_per_class"]),
            "flagged_share",
            p["max_flagged_share_per_class"],
            sev,
        )
    ]
    artefact_max = p.get("max_artefact_share_per_class", 1.0)
    for kind in ACQUISITION_KINDS:
        column = f"{kind}_flagged_share"
        checks.append(
            _Check(
                "confounders",
                "flagged_by_class",
                f"{kind}_share_per_class",
                gxe.ExpectColumnMaxToBeBetween(column=column, max_value=artefact_max),
                column,
                artefact_max,
                p.get("artefact_severity", sev),
            )
        )
    for col in [c for c in p["association_columns"] if c in features and c != "label"]:
        exp = ExpectColumnPairCramersVToBeLessThan(
            column_A=col, column_B="label", threshold=p["max_cramers_v"], bias_correction=p["cramers_v_bias_correction"]
        )
        checks.append(_Check("confounders", "features", f"association:{col}", exp, col, p["max_cramers_v"], sev))
    return checks


def _duplicate_checks(policy: dict[str, Any]) -> list[_Check]:
    p, sev = policy["duplicates_leakage"], policy["duplicates_leakage"]["severity"]
    share = p["max_within_split_duplicate_share"]
    return [
        _Check(
            "duplicates_leakage",
            "sha_groups",
            "label_conflicts",
            gxe.ExpectColumnValuesToBeBetween(column="n_labels", max_value=1),
            "n_labels",
            1,
            sev,
        ),
        _Check(
            "duplicates_leakage",
            "leaking_pairs",
            "cross_split_leakage",
            gxe.ExpectTableRowCountToEqual(value=0),
            None,
            0,
            sev,
        ),
        _Check(
            "duplicates_leakage",
            "split_duplicates",
            "within_split_duplicate_share",
            gxe.ExpectColumnMaxToBeBetween(column="duplicate_share", max_value=share),
            "duplicate_share",
            share,
            p.get("within_split_severity", sev),
        ),
    ]


# --------------------------------------------------------------------------- running
def _run_suites(context: Any, checks: list[_Check], tables: dict[str, _Table]) -> dict[str, Any]:
    """Run one GX suite per (concern, table); return the GX result of each check by name."""
    source = context.data_sources.add_pandas("skinflow")
    by_check: dict[str, Any] = {}
    for suite_name, table_name in dict.fromkeys((c.suite, c.table) for c in checks):
        table = tables[table_name]
        batch = source.add_dataframe_asset(f"{suite_name}.{table_name}").add_batch_definition_whole_dataframe("all")
        suite = context.suites.add(gx.ExpectationSuite(name=f"{suite_name}.{table_name}"))
        for check in (c for c in checks if (c.suite, c.table) == (suite_name, table_name)):
            check.expectation.meta = {"check": check.name, "severity": check.severity}
            suite.add_expectation(check.expectation)
        vd = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{suite_name}.{table_name}", data=batch, suite=suite)
        )
        result = vd.run(
            batch_parameters={"dataframe": table.frame},
            result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [table.id_column]},
        )
        by_check.update({r.expectation_config.meta["check"]: r for r in result.results})
    return by_check


def _outcome(check: _Check, result: Any, table: _Table) -> ExpectationOutcome:
    res = result.result or {}
    observed = res.get("observed_value")
    if "unexpected_count" in res:
        found = res.get("unexpected_index_list") or []
        ids = [row[table.id_column] for row in found]
        observed = res["unexpected_count"]
        details = {"unexpected": ids[:_MAX_DETAILS], **_examples(found, observed, check.column, table)}
    elif table.summary and check.column:
        details = {"values": dict(zip(table.frame[table.id_column], table.frame[check.column], strict=True))}
    elif table.summary:
        details = {"rows": table.frame[table.id_column].tolist()[:_MAX_DETAILS]}
    else:
        details = {}
    if result.exception_info.get("raised_exception"):
        details["exception"] = result.exception_info.get("exception_message")
    return ExpectationOutcome(
        suite=check.suite,
        check=check.name,
        expectation=type(check.expectation).__name__,
        column=check.column,
        observed=observed,
        threshold=check.threshold,
        success=bool(result.success),
        severity=check.severity,
        details=details,
    )


def _examples(found: list[dict], count: int, column: str | None, table: _Table) -> dict[str, Any]:
    """The first :data:`MAX_EXAMPLES` offending rows as ``{id, value, reason}`` and how many more."""
    notes = (
        dict(zip(table.frame[table.id_column], table.frame[table.note_column], strict=True))
        if table.note_column
        else {}
    )
    examples = [
        {
            "id": _plain(row[table.id_column]),
            "value": _plain(row.get(column)),
            "reason": str(notes.get(row[table.id_column], "")),
        }
        for row in found[:MAX_EXAMPLES]
    ]
    return {"examples": examples, "n_more": max(0, int(count) - len(examples))}


def _build_docs(context: Any, data_docs_dir: Path) -> Path:
    """Render the stored validation results as a static Data Docs site; return its index.html."""
    context.add_data_docs_site(
        site_name="skinflow",
        site_config={
            "class_name": "SiteBuilder",
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(data_docs_dir)},
        },
    )
    context.build_data_docs(site_names=["skinflow"])
    return data_docs_dir / "index.html"


def validate_features(
    features: pd.DataFrame,
    policy: dict[str, Any],
    classes: list[str],
    data_docs_dir: Path | None = None,
) -> ValidationReport:
    """Run every suite on ``features`` (from :func:`ml.quality.features.compute_features`) and derived tables."""
    features = features.reset_index(drop=True)
    used = features[usable_mask(features)].reset_index(drop=True)
    pairs = duplicate_pairs(used, policy["duplicates_leakage"]["phash_max_distance"])
    groups = sha_groups(used)
    leaking = leaking_pairs_table(used, pairs)
    counts = class_counts(features, classes)
    tables = {
        "features": _Table(
            features.assign(min_side=features[["width", "height"]].min(axis=1), why=file_problems(features)),
            "path",
            note_column="why",
        ),
        "usable": _Table(used, "path"),
        "class_counts": _Table(counts, "label", summary=True),
        "present_classes": _Table(counts[counts["count"] > 0].reset_index(drop=True), "label", summary=True),
        "flagged_by_class": _Table(flagged_by_class(used), "label", summary=True),
        "sha_groups": _Table(groups, "sha256", note_column="members"),
        "leaking_pairs": _Table(leaking.assign(pair=leaking["path_a"] + " | " + leaking["path_b"]), "pair", True),
        "split_duplicates": _Table(within_split_duplicates(used, pairs), "split", summary=True),
    }
    checks = [
        *_integrity_checks(policy, classes),
        *_balance_checks(policy, classes),
        *_confounder_checks(policy, features),
        *_duplicate_checks(policy),
    ]
    bad = {c.severity for c in checks} - set(SEVERITIES)
    if bad:
        raise ValueError(f"policy severities {sorted(bad)} are not among {SEVERITIES}")
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    gx_results = _run_suites(context, checks, tables)
    outcomes = [_outcome(c, gx_results[c.name], tables[c.table]) for c in checks]
    named = {
        "within_split_duplicate_share": _duplicate_examples(used, pairs, within=True),
        "cross_split_leakage": _duplicate_examples(used, pairs, within=False),
    }
    outcomes = [replace(o, details={**o.details, **named[o.check]}) if o.check in named else o for o in outcomes]
    docs = _build_docs(context, Path(data_docs_dir).resolve()) if data_docs_dir is not None else None
    return ValidationReport(
        outcomes,
        label_conflicts_table(used, groups),
        leaking,
        docs,
        bad_files_table(features),
        duplicate_groups_table(used, pairs),
        confounders_by_class(used),
    )
