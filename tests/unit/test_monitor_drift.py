"""The drift decision reads its inputs from the Evidently report's own results (the public
``Snapshot.dict()`` export), and ml/monitor imports nothing from ``evidently.legacy``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from ml.monitor import drift
from ml.monitor.policy import DriftPolicy
from tests.unit.monitor_fakes import described

MONITOR = Path(__file__).resolve().parents[2] / "ml" / "monitor"


@pytest.fixture(scope="module")
def measured():
    """A batch whose descriptors moved by 0.8 sd against an 80-image reference."""
    policy = DriftPolicy.load()
    reference, batch = described(80, seed=0), described(40, seed=1, shift=0.8)
    summary, snapshot = drift.measure_drift(reference, batch, policy, metadata={"batch": "b1"})
    return {"policy": policy, "reference": reference, "batch": batch, "summary": summary, "snapshot": snapshot}


def test_ml_monitor_imports_nothing_from_evidently_legacy():
    found = []
    for path in sorted(MONITOR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [f"{path.name}: {n}" for n in names if n.startswith("evidently.legacy")]
    assert found == []


def test_the_verdict_inputs_are_the_reports_results(measured):
    summary, results = measured["summary"], measured["snapshot"].dict()
    value_drift = {m["config"]["column"]: m for m in results["metrics"] if m["config"]["type"].endswith(":ValueDrift")}
    status = {
        t["metric_config"]["metric_id"]: str(getattr(t["status"], "value", t["status"])) for t in results["tests"]
    }
    assert [r["column"] for r in summary["columns"]][-4:] == ["max_prob", "entropy", "pred_class", "label"]
    for row in summary["columns"]:
        metric = value_drift[row["column"]]
        assert row["score"] == pytest.approx(float(metric["value"]), abs=0)
        assert row["method"] == metric["config"]["method"] and row["threshold"] == metric["config"]["threshold"]
        assert row["drifted"] == (status[metric["id"]] == "FAIL")  # Evidently's own per-column verdict
    # every tested descriptor and component has a row, before the predictions and the labels
    assert len(summary["columns"]) - 4 == summary["covariate"]["n_tested"]
    # the preset's drifted-columns count is the decision's count
    (count,) = [m for m in results["metrics"] if m["config"]["type"].endswith(":DriftedColumnsCount")]
    assert count["value"]["count"] == summary["covariate"]["n_drifted"]
    assert count["value"]["share"] == pytest.approx(summary["covariate"]["drifted_share"])
    # the two EmbeddingsDrift values, told apart by their drift method, with the policy's thresholds
    embeddings = {
        m["config"]["drift_method"]["type"].rsplit(":", 1)[-1]: m
        for m in results["metrics"]
        if m["config"]["type"].endswith(":EmbeddingsDrift")
    }
    assert summary["embedding"]["model_auc"] == float(embeddings["ModelDriftMethod"]["value"])
    assert summary["embedding"]["mmd"] == float(embeddings["MMDDriftMethod"]["value"])
    policy = measured["policy"]
    assert embeddings["ModelDriftMethod"]["config"]["drift_method"]["threshold"] == policy.embedding_model_auc
    assert embeddings["MMDDriftMethod"]["config"]["drift_method"]["threshold"] == policy.embedding_mmd


def test_a_descriptor_shift_is_covariate_drift(measured):
    summary = measured["summary"]
    assert summary["verdict"] == "drift" and summary["covariate"]["drifted"]
    assert summary["covariate"]["constant_columns"] == ["width", "height", "aspect_ratio"]
    assert summary["n_batch"] == 40 and summary["n_reference"] == 80


def test_without_render_the_same_verdict_and_no_snapshot(measured):
    summary, snapshot = drift.measure_drift(measured["reference"], measured["batch"], measured["policy"], render=False)
    assert snapshot is None
    assert drift.to_json(summary) == drift.to_json(measured["summary"])


def test_the_snapshot_carries_the_metadata(measured):
    assert measured["snapshot"].to_snapshot_model().metadata == {"batch": "b1"}


def _value_drift(column, method, value, threshold, metric_id):
    config = {"type": "evidently:metric_v2:ValueDrift", "column": column, "method": method, "threshold": threshold}
    return {"id": metric_id, "config": config, "value": value}


def test_column_results_order_and_fallback_without_tests():
    results = {
        "metrics": [
            _value_drift("b", "Wasserstein distance (normed)", 0.2, 0.1, "m2"),
            _value_drift("a", "K-S p_value", 0.01, 0.05, "m1"),
            _value_drift("c", "K-S p_value", 0.5, 0.05, "m3"),
        ],
        "tests": [],
    }
    rows = drift.column_results(results, order=["a", "b", "missing"])
    assert [r["column"] for r in rows] == ["a", "b"]
    assert rows[0]["p_value"] == 0.01 and rows[0]["drifted"]  # p-value below its threshold
    assert rows[1]["p_value"] is None and rows[1]["drifted"]  # a distance above its threshold
    assert not drift.column_results(results)[2]["drifted"]
    # with a test, its status decides (here against the threshold's reading)
    results["tests"] = [
        {
            "metric_config": {"metric_id": "m1", "params": {"type": "evidently:metric_v2:ValueDrift"}},
            "status": "SUCCESS",
        }
    ]
    assert not drift.column_results(results, order=["a"])[0]["drifted"]


def test_report_embedding_scores_by_method():
    def emb(kind, value):
        config = {
            "type": "evidently:metric_v2:EmbeddingsDrift",
            "drift_method": {"type": f"evidently:drift_method:{kind}"},
        }
        return {"id": kind, "config": config, "value": value}

    results = {"metrics": [emb("MMDDriftMethod", 0.02), emb("ModelDriftMethod", 0.7), emb("RatioDriftMethod", 0.1)]}
    assert drift.report_embedding_scores(results) == {"mmd": 0.02, "model_auc": 0.7}


def test_summary_metrics_are_the_measured_numbers_only():
    from ml.monitor.drift import summary_metrics

    summary = {
        "covariate": {"drifted_share": 0.25},
        "embedding": {"model_auc": 0.71, "mmd": 0.02},
        "n_batch": 40,
        "n_reference": 200,
        "label_shift": {"predicted": {"p_value": 0.5}, "bbse": None},
    }
    assert summary_metrics(summary) == {
        "drifted_share": 0.25,
        "embedding_model_auc": 0.71,
        "embedding_mmd": 0.02,
        "n_batch": 40.0,
        "n_reference": 200.0,
        "predicted_class_p": 0.5,
    }
    summary["label_shift"]["bbse"] = {"max_prior_change": 0.3, "expected_accuracy": None}
    assert summary_metrics(summary)["max_prior_change"] == 0.3 and "expected_accuracy" not in summary_metrics(summary)


def test_a_reference_of_a_dozen_images_is_insufficient_not_a_crash():
    """sklearn's TSNE (Evidently's embedding plot) refuses n_samples <= perplexity: with a dozen
    reference images the embedding tests are left out and the verdict is ``insufficient``."""
    from flows.cli import render

    policy = DriftPolicy.load()
    summary, snapshot = drift.measure_drift(described(12, seed=0), described(40, seed=1, shift=0.8), policy)
    assert summary["verdict"] == "insufficient" and snapshot is not None
    assert summary["reasons"][0].startswith("too few images to judge: batch 40, reference 12")
    assert summary["embedding"]["model_auc"] is None and summary["embedding"]["drifted"] is False
    assert "embedding_model_auc" not in drift.summary_metrics(summary)
    render.drift(
        summary
        | {
            "inputs": {},
            "report_page": "p",
            "report_html": "r",
            "mlflow_run_id": "r1",
            "event": "-",
            "notification": "-",
        }
    )  # prints
