"""What the verbs print cannot be forged by a file name: control characters are escaped."""

from __future__ import annotations

from flows.cli import render


def test_a_file_name_with_a_newline_cannot_forge_a_console_line(capsys):
    report = {"bad_files": [{"path": "data/evil\nskipped: fake.jpg: all good", "reason": "truncated"}]}
    render.findings(report)
    lines = capsys.readouterr().out.splitlines()
    assert not any(line.startswith("skipped: fake.jpg") for line in lines)
    assert any("data/evil\\nskipped: fake.jpg: all good: truncated" in line for line in lines)


def test_shown_escapes_control_characters_and_keeps_letters():
    assert render.shown("a\tb\x1b[31mc\u2028d\re") == "a\\tb\\x1b[31mc\\u2028d\\re"
    assert render.shown("湿疹 Café ok.jpg") == "湿疹 Café ok.jpg"


def test_quarantined_files_are_listed_first_with_their_group_and_where_the_list_is(capsys):
    rows = [
        {"path": f"d/{label}/x{i}.jpg", "label": label, "reason": "label_conflicts", "group": f"g{i}", "note": "n"}
        for i in range(15)
        for label in ("acne", "wheal")
    ]
    quarantine = {
        "summary": "30 files (label_conflicts) in 15 groups set aside: dataset version B from A",
        "parent_dataset_version": "A",
        "failed_before": ["duplicates_leakage:label_conflicts"],
        "rows": rows,
        "csv": "v/quarantine.csv",
        "manifest": "v/manifest.csv",
    }
    render.validation({"results": [], "quarantine": quarantine, "dataset_version": "B"})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("quarantined: 30 files (label_conflicts) in 15 groups set aside")
    assert lines[1].strip() == "dataset version A failed: duplicates_leakage:label_conflicts"
    assert lines[2].strip() == "d/acne/x0.jpg [acne]: label_conflicts, group g0 (n)"
    assert "... and 10 more" in lines[-3] and "every file: v/quarantine.csv" in lines[-2]
    render.validation({"results": [], "quarantine": None})
    assert "quarantined" not in capsys.readouterr().out
