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
* ``duplicates_leakage``: no picture (identical bytes or decoded pixels) under two labels, no exact or near duplicate across
  splits, few duplicates within a split.

GX binds one suite to one table, so a concern that reads two tables runs as two GX suites named
``<concern>.<table>``; outcomes carry the concern. Each suite runs through a GX ``Checkpoint`` (one per
suite: a checkpoint's batch parameters, here the dataframe, apply to all its validation definitions) whose
``UpdateDataDocsAction`` writes its pages into the offline Data Docs site (:mod:`ml.quality.data_docs`)
when ``data_docs_dir`` is given; all suites of one call share one GX run id.

``observed`` is GX's ``observed_value`` or, for row-wise expectations (which have none), the number of
unexpected rows; ``details`` lists the offending ids (row-wise: ``unexpected``, and ``examples``, the first
:data:`MAX_EXAMPLES` as ``{id, value, reason}`` with ``n_more`` the rest) or the derived table's values
(aggregates). The report also names every file not used (``bad_files``) and every duplicate group with its
paths (``duplicate_groups``); the within-split and cross-split checks name the groups they count
(``details['examples']``, one per group: its paths). ``confounders_by_class`` counts each confounder
kind per class. Duplicate, leakage and balance tables are computed on usable rows.

The modules: :mod:`ml.quality.gx_cramers` (the custom metric and expectation), :mod:`ml.quality.tables`
(derived tables), :mod:`ml.quality.checks` (the check catalogue), :mod:`ml.quality.report` (outcomes, report,
HTML summary), :mod:`ml.quality.data_docs` (the offline site); this one runs them and keeps the public names.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from pathlib import Path
from typing import Any

import great_expectations as gx
import pandas as pd
from great_expectations.checkpoint import UpdateDataDocsAction
from great_expectations.core.run_identifier import RunIdentifier
from great_expectations.data_context.types.base import ProgressBarsConfig

from ml.policies import PolicyError, policy_path
from ml.policies import load_policy as _load_policy
from ml.quality.checks import DEFAULT_MIN_CLASSES, Check, Table, all_checks, gx_tables
from ml.quality.data_docs import SITE_NAME, built_atomically, from_gx, gx_frame, site_config
from ml.quality.evidence import gallery
from ml.quality.features import usable_mask
from ml.quality.gx_cramers import ExpectColumnPairCramersVToBeLessThan, TableColumnPairCramersV, cramers_v
from ml.quality.quarantine import quarantined_findings
from ml.quality.report import (
    BAD_FILE_COLUMNS,
    DUPLICATE_GROUP_COLUMNS,
    MAX_EXAMPLES,
    MAX_LISTED,
    MAX_PATHS,
    SEVERITIES,
    ExpectationOutcome,
    ValidationReport,
    bounded,
    details_lines,
    plain,
)
from ml.quality.tables import (
    CONFOUNDER_KINDS,
    bad_files_table,
    class_counts,
    confounders_by_class,
    duplicate_examples,
    duplicate_groups_table,
    duplicate_pairs,
    file_problems,
    flagged_by_class,
    label_conflicts_table,
    leaking_pairs_table,
    sha_groups,
    skin_tones_by,
    within_split_duplicates,
)
from ml.storage import StorageError

__all__ = [
    "BAD_FILE_COLUMNS",
    "CONFOUNDER_KINDS",
    "DEFAULT_MIN_CLASSES",
    "DUPLICATE_GROUP_COLUMNS",
    "MAX_EXAMPLES",
    "MAX_LISTED",
    "MAX_PATHS",
    "SEVERITIES",
    "ExpectColumnPairCramersVToBeLessThan",
    "ExpectationOutcome",
    "TableColumnPairCramersV",
    "ValidationReport",
    "bad_files_table",
    "bounded",
    "class_counts",
    "confounders_by_class",
    "cramers_v",
    "details_lines",
    "duplicate_groups_table",
    "duplicate_pairs",
    "file_problems",
    "flagged_by_class",
    "label_conflicts_table",
    "leaking_pairs_table",
    "load_policy",
    "sha_groups",
    "validate_features",
    "within_split_duplicates",
]

_MAX_DETAILS = 50
RUN_NAME = "skinflow-validate"
"""The GX run name of every suite of one :func:`validate_features` call (the Data Docs' "Run Name")."""


def load_policy(path: str | Path | None = None) -> dict[str, Any]:
    """The validation policy at ``path`` (default: ``validation.yaml`` in the settings'
    ``policies_dir``), with every key of the shipped ``policies/validation.yaml`` and no other
    (:func:`ml.policies.load_policy`) and only quarantinable findings under ``quarantine``
    (:func:`ml.quality.quarantine.quarantined_findings`); mistakes are ``PolicyError``."""
    policy = _load_policy("validation", path)
    try:
        quarantined_findings(policy)
    except ValueError as exc:
        raise PolicyError(f"{policy_path('validation', path)}: {exc}") from exc
    return policy


def validate_features(
    features: pd.DataFrame,
    policy: dict[str, Any],
    classes: list[str],
    data_docs_dir: Path | None = None,
) -> ValidationReport:
    """Run every suite on ``features`` (from :func:`ml.quality.features.compute_features`) and derived tables;
    with ``data_docs_dir``, the suites' checkpoints write an offline Data Docs site there, whole or
    not at all (``ValidationReport.data_docs_index`` is its ``index.html``; when it cannot be written,
    ``data_docs_error`` says why and the outcomes are those of a run without pages)."""
    features = features.reset_index(drop=True)
    used = features[usable_mask(features)].reset_index(drop=True)
    pairs = duplicate_pairs(used, policy["duplicates_leakage"]["phash_max_distance"])
    groups = sha_groups(used)
    leaking = leaking_pairs_table(used, pairs)
    tables = gx_tables(features, used, pairs, classes, groups, leaking, policy)
    checks = all_checks(policy, classes, features)
    docs_dir = Path(data_docs_dir).resolve() if data_docs_dir is not None else None
    docs_error = None
    try:
        gx_results = (
            _run_checkpoints(checks, tables, None)
            if docs_dir is None
            else built_atomically(docs_dir, lambda tmp: _run_checkpoints(checks, tables, tmp))
        )
    except StorageError as exc:  # the pages could not be written (a full disk): the findings stand without them
        docs_error, docs_dir = str(exc), None
        checks = all_checks(policy, classes, features)  # fresh expectations: GX binds each to one suite
        gx_results = _run_checkpoints(checks, tables, None)
    outcomes = [_outcome(c, gx_results[c.name], tables[c.table]) for c in checks]
    unexpected = {c.name: _unexpected_ids(gx_results[c.name], tables[c.table]) for c in checks}
    named = {
        "within_split_duplicate_share": duplicate_examples(used, pairs, within=True),
        "cross_split_leakage": duplicate_examples(used, pairs, within=False),
    }
    outcomes = [replace(o, details={**o.details, **named[o.check]}) if o.check in named else o for o in outcomes]
    return ValidationReport(
        outcomes,
        label_conflicts_table(used, groups),
        leaking,
        docs_dir / "index.html" if docs_dir is not None else None,
        bad_files_table(features),
        duplicate_groups_table(used, pairs),
        confounders_by_class(used),
        {name: ids for name, ids in unexpected.items() if ids is not None},
        data_docs_error=docs_error,
        skin_tones=skin_tones_by(used),
        evidence=gallery(used),
        n_flagged=int((used.get("confounder_kinds", pd.Series(dtype=str)).fillna("").astype(str) != "").sum()),
    )


def _run_checkpoints(checks: list[Check], tables: dict[str, Table], docs_dir: Path | None) -> dict[str, Any]:
    """Run one GX suite per (concern, table), each through its own checkpoint (with an ``UpdateDataDocsAction``
    when ``docs_dir`` is given); return the GX result of each check by name."""
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    actions = []
    if docs_dir is not None:
        context.add_data_docs_site(site_name=SITE_NAME, site_config=site_config(docs_dir))
        actions = [UpdateDataDocsAction(name="update_data_docs", site_names=[SITE_NAME])]
    source = context.data_sources.add_pandas("skinflow")
    run_id = RunIdentifier(run_name=RUN_NAME, run_time=dt.datetime.now(dt.UTC))
    by_check: dict[str, Any] = {}
    for suite_name, table_name in dict.fromkeys((c.suite, c.table) for c in checks):
        name, table = f"{suite_name}.{table_name}", tables[table_name]
        mine = [c for c in checks if (c.suite, c.table) == (suite_name, table_name)]
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
        suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=[c.expectation for c in mine]))
        definition = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=name,
                validation_definitions=[definition],
                actions=actions,
                result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [table.id_column]},
            )
        )
        # what GX may write into a page from the data is escaped (ml.quality.data_docs), and read back by from_gx
        shown = [table.id_column, *(c.column for c in mine if c.column)]
        result = checkpoint.run(batch_parameters={"dataframe": gx_frame(table.frame, shown)}, run_id=run_id)
        for suite_result in result.run_results.values():
            by_check.update({r.expectation_config.meta["check"]: r for r in suite_result.results})
    return by_check


def _found(result: Any) -> list[dict[str, Any]]:
    """The offending rows GX lists (every one: result format COMPLETE), read back from its escaping."""
    return [{k: from_gx(v) for k, v in row.items()} for row in (result.result or {}).get("unexpected_index_list") or []]


def _unexpected_ids(result: Any, table: Table) -> list[Any] | None:
    """Every id a row-wise check named (None for an aggregate check)."""
    if "unexpected_count" not in (result.result or {}):
        return None
    return [row[table.id_column] for row in _found(result)]


def _outcome(check: Check, result: Any, table: Table) -> ExpectationOutcome:
    res = result.result or {}
    observed = res.get("observed_value")
    if "unexpected_count" in res:
        found = _found(result)
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
        severity=result.expectation_config.severity.value,
        details=details,
    )


def _examples(found: list[dict], count: int, column: str | None, table: Table) -> dict[str, Any]:
    """The first :data:`MAX_EXAMPLES` offending rows as ``{id, value, reason}`` and how many more."""
    notes = (
        dict(zip(table.frame[table.id_column], table.frame[table.note_column], strict=True))
        if table.note_column
        else {}
    )
    examples = [
        {
            "id": plain(row[table.id_column]),
            "value": plain(row.get(column)),
            "reason": str(notes.get(row[table.id_column], "")),
        }
        for row in found[:MAX_EXAMPLES]
    ]
    return {"examples": examples, "n_more": max(0, int(count) - len(examples))}
