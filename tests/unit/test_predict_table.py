"""The prediction table: one row per file, predicted or left out with its reason, top labels in
order, probabilities per class; and the run's counts."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ml.predict.config import PredictConfig
from ml.predict.table import prediction_table, summary

CLASSES = ["acne", "blister", "tumor", "ulcer"]


def test_rows_for_every_file_with_top_labels_in_order():
    probs = np.array([[0.1, 0.6, 0.2, 0.1], [0.25, 0.25, 0.4, 0.1]])
    bad = pd.DataFrame({"path": ["x/empty.jpg"], "label": [""], "reason": ["zero_bytes"], "message": ["file is empty"]})
    table = prediction_table(["x/a.jpg", "x/b.jpg"], pd.DataFrame(probs, columns=CLASSES), CLASSES, bad, top_k=3)
    assert table["path"].tolist() == ["x/a.jpg", "x/b.jpg", "x/empty.jpg"]
    assert table["status"].tolist() == ["predicted", "predicted", "left_out"]
    assert table.loc[0, ["top1", "top2", "top3"]].tolist() == ["blister", "tumor", "acne"]
    assert table.loc[1, ["top1", "top2"]].tolist() == ["tumor", "acne"], "a tie keeps the class order"
    assert table.loc[0, "label"] == "blister" and table.loc[0, "confidence"] == 0.6
    assert table.loc[2, "reason"] == "zero_bytes" and np.isnan(table.loc[2, "p_acne"])
    np.testing.assert_allclose(table.loc[:1, [f"p_{c}" for c in CLASSES]].to_numpy(), probs)
    assert summary(table) == {
        "n_files": 3,
        "n_predicted": 2,
        "n_left_out": 1,
        "left_out": {"zero_bytes": 1},
        "labels": {"blister": 1, "tumor": 1},
        "n_referred": 0,
        "referral_rate": 0.0,
    }
    assert table["prediction_set"].tolist()[:2] == ["", ""], "a model without trust serves no set"


def test_sets_and_refer_flags_come_through_as_served():
    answers = pd.DataFrame(
        {
            **{c: p for c, p in zip(CLASSES, np.eye(4)[[1, 2]].T, strict=True)},
            "prediction_set": ["blister", "tumor|ulcer"],
            "refer": [False, True],
        }
    )
    table = prediction_table(["a.jpg", "b.jpg"], answers, CLASSES)
    assert table["prediction_set"].tolist() == ["blister", "tumor|ulcer"]
    assert table["refer"].tolist() == [False, True]
    counts = summary(table)
    assert counts["n_referred"] == 1 and counts["referral_rate"] == 0.5


def test_nothing_usable_is_still_a_table_of_reasons():
    bad = pd.DataFrame({"path": ["n.jpg"], "label": [""], "reason": ["not_an_image"]})
    table = prediction_table([], pd.DataFrame(np.zeros((0, 4)), columns=CLASSES), CLASSES, bad)
    assert table["status"].tolist() == ["left_out"] and table["message"].tolist() == [""]


def test_the_default_model_is_the_registered_champion(monkeypatch):
    from ml.settings import get_settings

    monkeypatch.setenv("SKINFLOW_REGISTERED_MODEL", "derm")
    get_settings.cache_clear()
    try:
        assert PredictConfig(source="x").model() == "models:/derm@champion"
        assert PredictConfig(source="x", model_uri="models:/m/3").model() == "models:/m/3"
    finally:
        get_settings.cache_clear()
