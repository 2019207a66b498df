"""The check catalogue: which GX expectation checks what, on which table, with which threshold and severity
(all from ``policies/validation.yaml``), and the tables the checks read (:func:`gx_tables`).

A check's name travels in its expectation's ``meta`` (``{"check": name}``) and its severity in GX's own
``severity`` field (``FailureSeverity``: the policy's ``critical`` or ``warning``). Strings that may come
from the dataset (class names in value sets and partitions) are handed to GX escaped
(:func:`ml.quality.data_docs.gx_text`), as the tables' text is (:func:`ml.quality.data_docs.gx_frame`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import great_expectations.expectations as gxe
import numpy as np
import pandas as pd

from ml.quality.data_docs import gx_text
from ml.quality.features import ACQUISITION_KINDS
from ml.quality.gx_cramers import ExpectColumnPairCramersVToBeLessThan
from ml.quality.report import SEVERITIES
from ml.quality.tables import (
    class_counts,
    file_problems,
    flagged_by_class,
    skin_tone_splits,
    within_split_duplicates,
)

DEFAULT_MIN_CLASSES = 2


@dataclass(frozen=True)
class Check:
    """One expectation with its place in the report; the expectation carries the name and the severity."""

    suite: str
    table: str
    name: str
    expectation: gxe.Expectation
    column: str | None
    threshold: Any

    @property
    def severity(self) -> str:
        return self.expectation.severity.value


@dataclass(frozen=True)
class Table:
    """A table to validate; ``id_column`` names its rows in details; ``summary`` marks small
    per-group tables whose values are copied into the details of aggregate expectations;
    ``note_column`` holds the reason shown with each offending row."""

    frame: pd.DataFrame
    id_column: str
    summary: bool = False
    note_column: str | None = None


def _check(
    suite: str,
    table: str,
    name: str,
    expectation: type[gxe.Expectation],
    threshold: Any,
    severity: str,
    /,
    **kw: Any,
) -> Check:
    """A :class:`Check` whose expectation is ``expectation(**kw)`` with the check's name (``meta``) and ``severity``;
    the report's column is the expectation's ``column`` (``column_A`` for a pair)."""
    if severity not in SEVERITIES:
        raise ValueError(f"policy severities {[severity]} are not among {SEVERITIES}")
    gx_expectation = expectation(**kw, severity=severity, meta={"check": name})
    return Check(suite, table, name, gx_expectation, kw.get("column", kw.get("column_A")), threshold)


def _texts(values: list[Any]) -> list[Any]:
    return [gx_text(v) for v in values]


def _priors(classes: list[str], expected: dict[str, float] | None) -> list[float]:
    """Expected class shares in class-map order, normalised to sum to 1 (uniform when None)."""
    raw = np.array([1.0 if expected is None else float(expected.get(c, 0.0)) for c in classes])
    return list(raw / raw.sum())


def integrity_checks(policy: dict[str, Any], classes: list[str]) -> list[Check]:
    p, sev = policy["integrity"], policy["integrity"]["severity"]
    in_set, between = gxe.ExpectColumnValuesToBeInSet, gxe.ExpectColumnValuesToBeBetween
    modes, formats = p["allowed_modes"], p["allowed_formats"]
    spec = [
        ("decodes", in_set, True, {"column": "decode_ok", "value_set": [True]}),
        ("mode_allowed", in_set, modes, {"column": "mode", "value_set": _texts(modes)}),
        ("min_side", between, p["min_side"], {"column": "min_side", "min_value": p["min_side"]}),
        ("format_allowed", in_set, formats, {"column": "format", "value_set": _texts(formats)}),
        ("bytes_positive", between, 1, {"column": "bytes", "min_value": 1}),
        ("labels_known", in_set, classes, {"column": "label", "value_set": _texts(classes)}),
    ]
    return [_check("integrity", "features", n, e, t, sev, **kw) for n, e, t, kw in spec]


def balance_checks(policy: dict[str, Any], classes: list[str]) -> list[Check]:
    p, sev = policy["class_balance"], policy["class_balance"]["severity"]
    partition = {"values": _texts(classes), "weights": _priors(classes, p.get("expected_priors"))}
    min_classes, min_per_class = p.get("min_classes", DEFAULT_MIN_CLASSES), p["min_per_class"]
    ratio, kl = p["max_imbalance_ratio"], p["max_kl_divergence"]
    spec = [
        ("class_counts", "classes_present", gxe.ExpectColumnValuesToBeBetween, 1, {"column": "count", "min_value": 1}),
        ("present_classes", "min_classes", gxe.ExpectTableRowCountToBeBetween, min_classes, {"min_value": min_classes}),
        (
            "class_counts",
            "min_per_class",
            gxe.ExpectColumnMinToBeBetween,
            min_per_class,
            {"column": "count", "min_value": min_per_class},
        ),
        (
            "class_counts",
            "imbalance_ratio",
            gxe.ExpectColumnMaxToBeBetween,
            ratio,
            {"column": "ratio_to_min", "max_value": ratio},
        ),
        (
            "usable",
            "kl_divergence",
            gxe.ExpectColumnKLDivergenceToBeLessThan,
            kl,
            {"column": "label", "partition_object": partition, "threshold": kl},
        ),
    ]
    return [_check("class_balance", t, n, e, thr, sev, **kw) for t, n, e, thr, kw in spec]


def confounder_checks(policy: dict[str, Any], features: pd.DataFrame) -> list[Check]:
    p, sev = policy["confounders"], policy["confounders"]["severity"]
    share_max, artefact_max = p["max_flagged_share_per_class"], p.get("max_artefact_share_per_class", 1.0)
    artefact_sev, v_max = p.get("artefact_severity", sev), p["max_cramers_v"]
    column_max = gxe.ExpectColumnMaxToBeBetween
    checks = [
        _check(
            "confounders",
            "flagged_by_class",
            "flagged_share_per_class",
            column_max,
            share_max,
            sev,
            column="flagged_share",
            max_value=share_max,
        ),
        *(
            _check(
                "confounders",
                "flagged_by_class",
                f"{kind}_share_per_class",
                column_max,
                artefact_max,
                artefact_sev,
                column=f"{kind}_flagged_share",
                max_value=artefact_max,
            )
            for kind in ACQUISITION_KINDS
        ),
    ]
    for col in [c for c in p["association_columns"] if c in features and c != "label"]:
        pair = {"column_A": col, "column_B": "label", "bias_correction": p["cramers_v_bias_correction"]}
        checks.append(
            _check(
                "confounders",
                "features",
                f"association:{col}",
                ExpectColumnPairCramersVToBeLessThan,
                v_max,
                sev,
                threshold=v_max,
                **pair,
            )
        )
    return checks


def duplicate_checks(policy: dict[str, Any]) -> list[Check]:
    p, sev = policy["duplicates_leakage"], policy["duplicates_leakage"]["severity"]
    share, within_sev = p["max_within_split_duplicate_share"], p.get("within_split_severity", sev)
    spec = [
        (
            "sha_groups",
            "label_conflicts",
            gxe.ExpectColumnValuesToBeBetween,
            1,
            sev,
            {"column": "n_labels", "max_value": 1},
        ),
        ("leaking_pairs", "cross_split_leakage", gxe.ExpectTableRowCountToEqual, 0, sev, {"value": 0}),
        (
            "split_duplicates",
            "within_split_duplicate_share",
            gxe.ExpectColumnMaxToBeBetween,
            share,
            within_sev,
            {"column": "duplicate_share", "max_value": share},
        ),
    ]
    return [_check("duplicates_leakage", t, n, e, thr, s, **kw) for t, n, e, thr, s, kw in spec]


def skin_tone_checks(policy: dict[str, Any]) -> list[Check]:
    """A skin-tone group held out (val/test) but nearly absent from training (``skin_tone_splits``)."""
    p = policy["skin_tone"]
    return [
        _check(
            "skin_tone",
            "skin_tone_splits",
            "skin_tone_in_training",
            gxe.ExpectColumnValuesToBeBetween,
            0,
            p["severity"],
            column="missing_in_train",
            max_value=0,
        )
    ]


def all_checks(policy: dict[str, Any], classes: list[str], features: pd.DataFrame) -> list[Check]:
    """Every check of the policy, concern by concern (integrity, class balance, confounders, duplicates,
    skin tone)."""
    return [
        *integrity_checks(policy, classes),
        *balance_checks(policy, classes),
        *confounder_checks(policy, features),
        *duplicate_checks(policy),
        *skin_tone_checks(policy),
    ]


def gx_tables(
    features: pd.DataFrame,
    used: pd.DataFrame,
    pairs: pd.DataFrame,
    classes: list[str],
    groups: pd.DataFrame,
    leaking: pd.DataFrame,
    policy: dict[str, Any],
) -> dict[str, Table]:
    """The tables the checks read, by the name a :class:`Check` gives in ``table``: all rows (``features``),
    the usable ones, usable images per class and the classes present, confounder shares per class,
    identical-bytes groups, leaking pairs, duplicates per split."""
    counts = class_counts(features, classes)
    return {
        "features": Table(
            features.assign(min_side=features[["width", "height"]].min(axis=1), why=file_problems(features)),
            "path",
            note_column="why",
        ),
        "usable": Table(used, "path"),
        "class_counts": Table(counts, "label", summary=True),
        "present_classes": Table(counts[counts["count"] > 0].reset_index(drop=True), "label", summary=True),
        "flagged_by_class": Table(flagged_by_class(used), "label", summary=True),
        "sha_groups": Table(groups, "content", note_column="members"),
        "leaking_pairs": Table(leaking.assign(pair=leaking["path_a"] + " | " + leaking["path_b"]), "pair", True),
        "split_duplicates": Table(within_split_duplicates(used, pairs), "split", summary=True),
        "skin_tone_splits": Table(
            skin_tone_splits(used, policy["skin_tone"]["min_train_share"], policy["skin_tone"]["min_heldout_images"]),
            "ita_group",
            summary=True,
        ),
    }
