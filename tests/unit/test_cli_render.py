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
