"""bench_label_issues' section says the machine, the load, both parts' figures and the noise table."""

from __future__ import annotations

from bench.bench_label_issues import SETTINGS, render


def test_the_section_names_the_shipped_setting_and_the_isic9_counts():
    rows = [
        {"c": c, "filter": f, "precision": 0.7, "precision_min": 0.6, "recall": 0.86, "recall_min": 0.75}
        for c, f in SETTINGS
    ]
    result = {
        "date": "2026-12-07",
        "commit": "0123456789",
        "machine": {"cpu_model": "Xeon", "usable_cores": 2},
        "load": "nothing else competed",
        "planted": {"images": 400, "planted": 20, "draws": 8, "feature_seconds": 3.0, "rows": rows},
        "isic9": {
            "images": 2000,
            "size": 128,
            "times": {"features": 60.0},
            "probe_accuracy": 0.5,
            "flagged": 300,
            "conflict_files": 310,
            "conflicts_flagged": 310,
            "conflicts_flagged_as_copy": 310,
            "conflicts_flagged_as_mislabelled": 90,
            "new_issues": 120,
            "new_by_reason": {"likely_mislabelled": 100, "outlier": 20},
            "noise": [{"given_label": "nevus", "true_label": "melanoma", "share": 0.02, "images": 40}],
        },
    }
    text = render(result)
    assert "on Xeon (2 cores); nothing else competed" in text
    assert "| 0.1 | prune_by_class (shipped) | 0.86 (min 0.75) | 0.70 (min 0.60) |" in text
    assert "Of the 310 files" in text and "310 are flagged" in text and "New issues: 120" in text
    assert "| nevus | melanoma | 0.020 | 40 |" in text
