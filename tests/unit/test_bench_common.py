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
