"""bench/bench_step.py: every cell of the grid is timed in every round and lands in its section."""

from __future__ import annotations

import json

from bench import bench_step


def test_a_tiny_grid_writes_every_cell_with_its_ratio(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(bench_step, "REPO", tmp_path)
    (tmp_path / "bench" / "out").mkdir(parents=True)
    out = tmp_path / "RESULTS.md"
    out.write_text("# results\n")
    args = ["--archs", "resnet18", "--size", "16", "--batch", "2", "--warmup", "0", "--steps", "1", "--rounds", "2"]
    result = bench_step.main([*args, "--out", str(out)])
    cells = {(c["format"], c["precision"]): c for c in result["cells"]}
    assert set(cells) == {(f, p) for f in bench_step.FORMATS for p in bench_step.PRECISIONS}
    assert all(len(c["all_s"]) == 2 and c["median_s"] > 0 for c in cells.values())
    text = out.read_text()
    assert text.startswith("# results\n") and "<!-- step:start -->" in text
    assert (
        "| resnet18 | contiguous | fp32 |" in text and "1.00x" in text and "| resnet18 | channels_last | bf16 |" in text
    )
    saved = json.loads((tmp_path / "bench" / "out" / "bench_step.json").read_text())
    assert saved["cells"] == json.loads(json.dumps(result["cells"]))
