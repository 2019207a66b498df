"""Covariate drift, embedding drift and label shift of a batch against its reference, as one
Evidently 0.7 report and one decision.

The frame compared holds, per image: the descriptors (:data:`ml.monitor.describe.DESCRIPTORS`),
the embeddings reduced by a PCA fitted on the reference (``pc_0`` ...), and the predictions
(``pred_class``, ``max_prob``, ``entropy``), plus ``label`` when both sides have true labels.

Report: ``DataDriftPreset(columns=descriptors + leading components)`` (Evidently's per-column
stat tests, sample-size aware, and the drifted share), ``ValueDrift`` on the predictions and
labels, and ``EmbeddingsDrift`` over all components with the model-based and MMD methods
(``columns=`` keeps the embedding dimensions out of the per-column tests).

Decision (:func:`decide`, thresholds in ``policies/drift.yaml``):

* covariate drift: drifted share >= ``drifted_share``, or a Holm-adjusted p-value below
  ``family_alpha`` over the p-value columns (a single p < 0.05 among ~20 columns is chance);
* embedding drift: model-based ROC AUC above ``max(embedding_model_auc, q)``, ``q`` the 99.9%
  quantile of the AUC under no drift for the held-out half's size (normal approximation of the
  Mann-Whitney statistic; the random split widens it a little), or MMD above ``embedding_mmd``;
* label shift: chi-square test of the predicted-class distribution (and of the true labels when
  present) at ``label_alpha``, or a BBSE prior that moved by more than ``prior_change`` with its
  bootstrap interval excluding the reference prior.

The decision reads its inputs from the report's own results (``Snapshot.dict()``, Evidently's
public export): each ``ValueDrift``'s score, method and threshold, and whether its drift test
failed (Evidently's per-column verdict), and the two ``EmbeddingsDrift`` values. What decides
is what the HTML shows. The report costs ~2-4 s at calibration sizes (each ``EmbeddingsDrift``
renders a TSNE), so calibration over many batches pays it once per batch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from ml.monitor.describe import DESCRIPTORS, Described
from ml.monitor.label_shift import LabelShiftEstimate
from ml.monitor.policy import DriftPolicy

EMBEDDINGS_NAME = "penultimate"
Z_NULL = 3.090232306167813  # one-sided 99.9% normal quantile


# Evidently's EmbeddingsDrift draws a TSNE of the reference with this perplexity: it needs more rows
TSNE_PERPLEXITY = 30


def fit_pca(reference_embeddings: np.ndarray, n_components: int, seed: int = 0):
    """PCA of the reference embeddings (the batch is projected on the reference's axes)."""
    from sklearn.decomposition import PCA

    k = int(max(1, min(n_components, reference_embeddings.shape[1], len(reference_embeddings) - 1)))
    return PCA(n_components=k, random_state=seed).fit(reference_embeddings)


def frame(described: Described, pca, with_labels: bool) -> pd.DataFrame:
    """The table Evidently compares for one side."""
    pcs = pca.transform(described.embeddings) if len(described) else np.zeros((0, pca.n_components_))
    out = described.table[list(DESCRIPTORS) + ["pred_class", "max_prob", "entropy"]].copy()
    out["pred_class"] = out["pred_class"].astype(str)
    for i in range(pcs.shape[1]):
        out[f"pc_{i}"] = pcs[:, i]
    if with_labels:
        out["label"] = described.table["label"].astype(str).to_numpy()
    return out.reset_index(drop=True)


@dataclass
class Columns:
    """Which columns each part of the report uses."""

    covariate: list[str]
    components: list[str]
    constant: list[str]
    predictions: list[str]
    labels: bool


def choose_columns(ref: pd.DataFrame, cur: pd.DataFrame, policy: DriftPolicy, labels: bool) -> Columns:
    """Descriptors and leading components to test; a column constant and equal on both sides
    (e.g. the width of same-size images) has nothing to test and is listed as constant."""
    components = [c for c in ref.columns if c.startswith("pc_")]
    covariate, constant = [], []
    for col in [*DESCRIPTORS, *components[: policy.tested_components]]:
        values = pd.concat([ref[col], cur[col]]).dropna()
        (constant if values.nunique() <= 1 else covariate).append(col)
    return Columns(covariate, components, constant, ["pred_class", "max_prob", "entropy"], labels)


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given)."""
    m = len(pvalues)
    order = np.argsort(pvalues)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted.tolist()


def auc_null_quantile(n_reference: int, n_batch: int) -> float:
    """99.9% quantile of the held-out ROC AUC of a classifier that cannot tell the sides apart:
    Evidently's model method scores on a random half of the pooled rows."""
    n1, n2 = max(n_reference // 2, 1), max(n_batch // 2, 1)
    return 0.5 + Z_NULL * math.sqrt((n1 + n2 + 1) / (12.0 * n1 * n2))


def _chi2(ref: pd.Series, cur: pd.Series) -> dict[str, Any]:
    """Chi-square test of two categorical samples (2 x K contingency table)."""
    cats = sorted(set(ref) | set(cur))
    table = np.array([[int((ref == c).sum()) for c in cats], [int((cur == c).sum()) for c in cats]])
    table = table[:, table.sum(axis=0) > 0]
    p = 1.0 if table.shape[1] < 2 or min(table.sum(axis=1)) == 0 else float(stats.chi2_contingency(table)[1])
    return {
        "p_value": p,
        "reference": {c: float((ref == c).mean()) for c in cats},
        "batch": {c: float((cur == c).mean()) for c in cats},
    }


def build_report(columns: Columns, policy: DriftPolicy, embeddings: bool = True):
    """The Evidently 0.7 report (current batch first when it runs); ``embeddings=False`` leaves
    out the EmbeddingsDrift metrics (and their TSNE plots)."""
    from evidently import Report
    from evidently.metrics import EmbeddingsDrift, ValueDrift

    # the drift methods as Evidently's 0.7 cookbook imports them (examples/cookbook/metrics.ipynb:
    # ``from evidently.metrics.embeddings import ... MMDDriftMethod, ModelDriftMethod``); the same
    # defaults as the legacy ``model()``/``mmd()`` factories
    from evidently.metrics.embeddings import MMDDriftMethod, ModelDriftMethod
    from evidently.presets import DataDriftPreset
    from evidently.tests import lte

    metrics: list = [DataDriftPreset(columns=columns.covariate, drift_share=policy.drifted_share)]
    metrics += [ValueDrift(column=c) for c in columns.predictions + (["label"] if columns.labels else [])]
    metrics += (
        []
        if not embeddings
        else [
            EmbeddingsDrift(
                embeddings_name=EMBEDDINGS_NAME,
                drift_method=ModelDriftMethod(threshold=policy.embedding_model_auc),
                tests=[lte(policy.embedding_model_auc)],
            ),
            EmbeddingsDrift(
                embeddings_name=EMBEDDINGS_NAME,
                drift_method=MMDDriftMethod(threshold=policy.embedding_mmd),
                tests=[lte(policy.embedding_mmd)],
            ),
        ]
    )
    return Report(metrics, include_tests=True)


def run_report(
    ref: pd.DataFrame,
    cur: pd.DataFrame,
    columns: Columns,
    policy: DriftPolicy,
    embeddings: bool = True,
    metadata: dict[str, Any] | None = None,
):
    """Run the report (BLAS/OpenMP limited to one thread: EmbeddingsDrift's TSNE otherwise costs
    ~30 s per metric on 2 cores). ``metadata`` goes with the snapshot (shown in a workspace).
    Returns the Evidently snapshot."""
    from evidently import DataDefinition, Dataset
    from threadpoolctl import threadpool_limits

    numeric = [*columns.covariate, "max_prob", "entropy", *columns.components]
    categorical = ["pred_class"] + (["label"] if columns.labels else [])
    used = list(dict.fromkeys([*numeric, *categorical]))
    definition = DataDefinition(
        numerical_columns=list(dict.fromkeys(numeric)),
        categorical_columns=categorical,
        embeddings={EMBEDDINGS_NAME: columns.components},
    )
    with threadpool_limits(1):
        return build_report(columns, policy, embeddings).run(
            Dataset.from_pandas(cur[used], data_definition=definition),
            Dataset.from_pandas(ref[used], data_definition=definition),
            metadata=metadata,
        )


def _metrics(snapshot_dict: dict, kind: str) -> list[dict[str, Any]]:
    """The entries of ``Snapshot.dict()["metrics"]`` of one metric type (e.g. ``ValueDrift``)."""
    return [m for m in snapshot_dict["metrics"] if str(m.get("config", {}).get("type", "")).endswith(f":{kind}")]


def column_results(snapshot_dict: dict, order: list[str] | None = None) -> list[dict[str, Any]]:
    """Per-column results of the report's ValueDrift metrics (``Snapshot.dict()``): column,
    method, score, threshold, p_value (p-value methods) and drifted: whether the metric's drift
    test failed, i.e. Evidently's own per-column verdict (without tests in the report: p-value
    methods score < threshold, distances score > threshold). ``order``: the columns wanted, in
    this order (others left out)."""
    failed = {
        t["metric_config"]["metric_id"]: str(getattr(t["status"], "value", t["status"])) == "FAIL"
        for t in snapshot_dict.get("tests", [])
        if str(t.get("metric_config", {}).get("params", {}).get("type", "")).endswith(":ValueDrift")
    }
    rows = {}
    for m in _metrics(snapshot_dict, "ValueDrift"):
        cfg = m["config"]
        method, score, threshold = str(cfg.get("method")), float(m["value"]), float(cfg.get("threshold"))
        is_p = "p_value" in method
        rows[cfg["column"]] = {
            "column": cfg["column"],
            "method": method,
            "score": score,
            "threshold": threshold,
            "p_value": score if is_p else None,
            "drifted": bool(
                failed[m["id"]] if m["id"] in failed else (score < threshold if is_p else score > threshold)
            ),
        }
    return list(rows.values()) if order is None else [rows[c] for c in order if c in rows]


EMBEDDING_METHODS = {"ModelDriftMethod": "model_auc", "MMDDriftMethod": "mmd"}


def report_embedding_scores(snapshot_dict: dict) -> dict[str, float]:
    """The EmbeddingsDrift values of the report by method (``model_auc``, ``mmd``): the two
    metrics share one name, their ``drift_method`` type tells them apart."""
    out = {}
    for m in _metrics(snapshot_dict, "EmbeddingsDrift"):
        kind = str(m["config"]["drift_method"]["type"]).rsplit(":", 1)[-1]
        if kind in EMBEDDING_METHODS:
            out[EMBEDDING_METHODS[kind]] = float(m["value"])
    return out


def decide(
    ref: pd.DataFrame,
    cur: pd.DataFrame,
    columns: Columns,
    per_column: list[dict[str, Any]],
    embedding: dict[str, float],
    policy: DriftPolicy,
    label_estimate: LabelShiftEstimate | None = None,
    classes: list[str] | None = None,
) -> dict[str, Any]:
    """The verdict and the numbers behind it (see the module docstring)."""
    n_ref, n_cur = len(ref), len(cur)
    cov_rows = [r for r in per_column if r["column"] in columns.covariate]
    pvals = [r for r in cov_rows if r["p_value"] is not None]
    for r, adj in zip(pvals, holm([r["p_value"] for r in pvals]), strict=True):
        r["p_holm"] = adj
    n_drifted = sum(r["drifted"] for r in cov_rows)
    share = n_drifted / len(cov_rows) if cov_rows else 0.0
    holm_hits = [r["column"] for r in pvals if r["p_holm"] < policy.family_alpha]
    covariate = {
        "drifted_share": share,
        "n_tested": len(cov_rows),
        "n_drifted": n_drifted,
        "share_threshold": policy.drifted_share,
        "holm_significant": holm_hits,
        "family_alpha": policy.family_alpha,
        "constant_columns": columns.constant,
        "drifted": bool(share >= policy.drifted_share or holm_hits),
    }
    auc_threshold = max(policy.embedding_model_auc, auc_null_quantile(n_ref, n_cur))
    emb = {
        **embedding,
        "model_auc_threshold": auc_threshold,
        "mmd_threshold": policy.embedding_mmd,
        "components": len(columns.components),
    }
    measured = embedding["model_auc"] is not None  # not run on too few images (TSNE_PERPLEXITY)
    emb["drifted"] = measured and bool(
        embedding["model_auc"] > auc_threshold or embedding["mmd"] > policy.embedding_mmd
    )
    predicted = _chi2(ref["pred_class"], cur["pred_class"])
    predicted["drifted"] = predicted["p_value"] < policy.label_alpha
    labels = None
    if columns.labels:
        labels = _chi2(ref.loc[ref["label"] != "", "label"], cur["label"])  # labelled reference rows only
        labels["drifted"] = labels["p_value"] < policy.label_alpha
    bbse = None
    if label_estimate is not None:
        bbse = label_estimate.to_dict(classes or [])
        moved = np.abs(label_estimate.priors - label_estimate.reference_priors) > policy.prior_change
        bbse["changed_classes"] = [
            c for c, m, s in zip(classes or [], moved, label_estimate.significant(), strict=True) if m and s
        ]
        bbse["drifted"] = bool(bbse["changed_classes"])
    label_drift = bool(predicted["drifted"] or (labels and labels["drifted"]) or (bbse and bbse["drifted"]))
    reasons = []
    if covariate["drifted"]:
        reasons.append(
            f"covariate: {n_drifted}/{len(cov_rows)} columns drifted (share {share:.2f}"
            + (f"; Holm-significant: {', '.join(holm_hits)})" if holm_hits else ")")
        )
    if emb["drifted"]:
        reasons.append(
            f"embeddings: model AUC {embedding['model_auc']:.3f} (threshold {auc_threshold:.3f}), "
            f"MMD {embedding['mmd']:.4f} (threshold {policy.embedding_mmd})"
        )
    if predicted["drifted"]:
        reasons.append(f"predicted classes: chi-square p={predicted['p_value']:.2g} < {policy.label_alpha}")
    if labels and labels["drifted"]:
        reasons.append(f"true labels: chi-square p={labels['p_value']:.2g} < {policy.label_alpha}")
    if bbse and bbse["drifted"]:
        reasons.append(f"BBSE priors moved > {policy.prior_change}: {', '.join(bbse['changed_classes'])}")
    if n_cur < policy.min_batch or n_ref < policy.min_batch:
        verdict = "insufficient"
        reasons.insert(0, f"too few images to judge: batch {n_cur}, reference {n_ref} (min_batch {policy.min_batch})")
    else:
        verdict = "drift" if reasons else "no_drift"
    top = sorted(cov_rows, key=lambda r: (not r["drifted"], r["p_value"] if r["p_value"] is not None else -r["score"]))
    return {
        "verdict": verdict,
        "reasons": reasons,
        "n_reference": n_ref,
        "n_batch": n_cur,
        "covariate": covariate,
        "columns": per_column,
        "top_drifted": [r["column"] for r in top if r["drifted"]][:5],
        "embedding": emb,
        "label_shift": {"predicted": predicted, "true_labels": labels, "bbse": bbse, "drifted": label_drift},
        "policy": policy.to_dict(),
    }


def save_html(snapshot, summary: dict[str, Any], path: str | Path) -> Path:
    """Evidently's report at ``path``, as ``snapshot.save_html`` writes it, and skinflow's verdict
    page beside it (``<stem>.verdict.html``, linking and embedding the report): see
    :func:`ml.monitor.report_page.write_report_pages`. Returns the verdict page."""
    from ml.monitor.report_page import write_report_pages

    path = Path(path)
    return write_report_pages(
        snapshot, summary, path.parent, report_name=path.name, page_name=f"{path.stem}.verdict.html"
    )["page"]


def to_json(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=2, default=lambda o: o.item() if hasattr(o, "item") else str(o))


def measure_drift(
    reference: Described,
    batch: Described,
    policy: DriftPolicy,
    label_estimate: LabelShiftEstimate | None = None,
    render: bool = True,
    seed: int = 0,
    metadata: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], Any]:
    """PCA on the reference, the two frames, the Evidently report and the decision read from its
    results: ``(summary, snapshot)``. ``render=False`` drops the snapshot once the decision is
    read (``snapshot`` None: calibration keeps only verdicts); ``metadata`` goes with the snapshot."""
    pca = fit_pca(reference.embeddings, policy.pca_components, seed)
    labels = bool((reference.label_indices() >= 0).any() and (batch.label_indices() >= 0).all())
    ref, cur = frame(reference, pca, labels), frame(batch, pca, labels)
    columns = choose_columns(ref, cur, policy, labels)
    embeddings = len(ref) > TSNE_PERPLEXITY  # Evidently's embedding plot runs a TSNE on the reference rows
    snapshot = run_report(ref, cur, columns, policy, embeddings=embeddings, metadata=metadata)
    results = snapshot.dict()
    order = [*columns.covariate, "max_prob", "entropy", "pred_class"] + (["label"] if labels else [])
    summary = decide(
        ref,
        cur,
        columns,
        column_results(results, order),
        report_embedding_scores(results) if embeddings else {"model_auc": None, "mmd": None},
        policy,
        label_estimate,
        reference.classes,
    )
    summary["pca_explained_variance"] = float(np.sum(pca.explained_variance_ratio_))
    return summary, snapshot if render else None


def summary_metrics(summary: dict) -> dict[str, float]:
    """The numbers of a monitor run's summary that go to MLflow as metrics (those measured)."""
    bbse = summary["label_shift"].get("bbse") or {}
    metrics = {
        "drifted_share": summary["covariate"]["drifted_share"],
        "embedding_model_auc": summary["embedding"]["model_auc"],
        "embedding_mmd": summary["embedding"]["mmd"],
        "n_batch": summary["n_batch"],
        "n_reference": summary["n_reference"],
        "predicted_class_p": summary["label_shift"]["predicted"]["p_value"],
        "max_prior_change": bbse.get("max_prior_change"),
        "expected_accuracy": bbse.get("expected_accuracy"),
    }
    return {k: float(v) for k, v in metrics.items() if v is not None}
