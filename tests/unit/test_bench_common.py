"""The shared RESULTS.md section helpers: each benchmark replaces only its own marked section."""

from __future__ import annotations

import pytest

from bench.common import marked_sections, replace_section


def test_replace_section_appends_then_replaces_in_place():
    doc = "# Results\n\nintro\n"
    once = replace_section(doc, "features", "## Features\nv1")
    assert once == "# Results\n\nintro\n\n<!-- features:start -->\n## Features\nv1\n<!-- features:end -->\n"
    both = replace_section(once, "overhead", "## Overhead\nx")
    again = replace_section(both, "features", "## Features\nv2")
    assert "v1" not in again and "v2" in again and "## Overhead\nx" in again
    assert again.startswith("# Results\n\nintro\n") and again.index("features:start") < again.index("overhead:start")


def test_unbalanced_markers_are_an_error():
    with pytest.raises(ValueError, match="unbalanced"):
        replace_section("<!-- features:start -->\nno end\n", "features", "x")


def test_marked_sections_returns_every_block_with_its_markers():
    doc = replace_section(replace_section("# top\n", "a", "A"), "b", "B")
    assert marked_sections(doc) == ["<!-- a:start -->\nA\n<!-- a:end -->", "<!-- b:start -->\nB\n<!-- b:end -->"]
    assert marked_sections("# nothing marked\n") == []


def test_load_remark_says_shared_quiet_or_unknown():
    from bench.common import load_remark

    assert "shared with other jobs" in load_remark([0.5, 0.4, 0.3], [5.2, 3.0, 1.0], cores=2)
    assert "5.2" in load_remark([0.5, 0.4, 0.3], [5.2, 3.0, 1.0], cores=2)
    quiet = load_remark([1.9, 1.0, 0.5], None, cores=2)
    assert "nothing else" in quiet and "1.9" in quiet
    assert "unknown" in load_remark(None, None, cores=2)  # no /proc/loadavg: said, not guessed


def test_marked_sections_with_hyphenated_names_survive_a_training_rerun(tmp_path):
    """bench_train rewrites RESULTS.md around the marked sections: a `large-jpeg` section (hyphen)
    must be kept, the hand-written `state` section stays on top, and a reading written by hand
    between two sections survives byte for byte (a rerun once dropped every one of them)."""
    from bench.bench_train import keep_other_sections

    doc = tmp_path / "RESULTS.md"
    doc.write_text(
        "<!-- state:start -->\nS\n<!-- state:end -->\n# old training text\n\n"
        "<!-- large-jpeg:start -->\nJ\n<!-- large-jpeg:end -->\n\n### Reading\n\nBy hand.\n\n"
        "<!-- load:start -->\nL\n<!-- load:end -->\nTail by hand.\n"
    )
    assert [b.splitlines()[1] for b in marked_sections(doc.read_text())] == ["S", "J", "L"]
    new = keep_other_sections(doc, "# new training text\n")
    assert new.startswith("<!-- state:start -->\nS\n<!-- state:end -->\n\n# new training text\n")
    assert "old training text" not in new
    assert new.index("# new training text") < new.index("large-jpeg:start") < new.index("load:start")
    old = doc.read_text()
    assert new.endswith(old[old.index("<!-- large-jpeg:start -->") :])  # readings by hand included
