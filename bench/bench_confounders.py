"""Confounder flags a user can believe: the pen-mark flag against look-alikes, and on isic9.

1. **Synthetic** (ml.data.synth at 128 px, 6 images per class, seed 0): the share of images the
   pen-mark flag fires on for each distractor alone (hair, lips, dark lesion, shadow) and for dark
   skin, none of which carries ink; its recall on pen-marked images; and its precision on a mixed
   set (30% pen-marked, 60% with a distractor).
2. **isic9**: the share of images flagged per class (dermoscopy: no pen marks were planted, so a
   flag is a finding for a person to check with the summary's evidence gallery).

    python -m bench.bench_confounders
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from bench.common import (
    git_commit,
    load_average,
    load_remark,
    machine_description,
    md_table,
    replace_section,
    usable_cores,
)

REPO = Path(__file__).resolve().parents[1]
ISIC9 = REPO.parent / "shared" / "data" / "isic9"
SECTION = "confounders"


def _features(root: Path, **knobs: Any) -> pd.DataFrame:
    from ml.data.synth import SynthConfig, generate
    from ml.quality.features import compute_features

    generate(root, SynthConfig(per_class=6, size=128, seed=0, **knobs), progress=False)
    meta = pd.read_csv(root / "synth_meta.csv", keep_default_na=False)
    records = pd.DataFrame({"path": [str(root / p) for p in meta["path"]], "label": meta["label"]})
    return compute_features(records, workers=2).join(meta.drop(columns=["path", "label"]))


def synthetic(work: Path) -> dict[str, float]:
    from ml.data.synth import DISTRACTORS

    out = {}
    for kind in DISTRACTORS:
        out[f"false flags: {kind}"] = float(
            _features(work / kind, distractor_rate=1.0, distractors=(kind,))["confounder_flag"].mean()
        )
    out["false flags: dark skin"] = float(
        _features(work / "dark", skin_tones=[0, 0, 0, 0, 1, 1])["confounder_flag"].mean()
    )
    out["recall on pen marks"] = float(_features(work / "pen", pen_rate=1.0)["confounder_flag"].mean())
    mixed = _features(work / "mixed", pen_rate=0.3, distractor_rate=0.6)
    flagged = mixed[mixed["confounder_flag"]]
    out["precision, mixed set"] = float(flagged["pen_mark"].mean()) if len(flagged) else float("nan")
    out["recall, mixed set"] = float(mixed.loc[mixed["pen_mark"] == 1, "confounder_flag"].mean())
    return out


def isic9() -> dict[str, float]:
    from ml.data.manifest import build_manifest
    from ml.quality.features import compute_features

    m = build_manifest(ISIC9, workers=2)
    f = compute_features(m.records.assign(reason="", message=""), workers=2)
    return {"all": float(f["confounder_flag"].mean()), **f.groupby("label")["confounder_flag"].mean().to_dict()}


def render(result: dict[str, Any]) -> str:
    syn = [[k, f"{v:.2f}"] for k, v in result["synthetic"].items()]
    real = [[k, f"{v:.3f}"] for k, v in result["isic9"].items()]
    return "\n".join(
        [
            f"Measured {result['date']} at commit {result['commit'][:8]} on {result['machine']['cpu_model']} "
            f"({result['machine']['usable_cores']} cores); {result['load']}.",
            "",
            "**Synthetic** (128 px, 60 images per set): share of images the pen-mark flag fires on.",
            "",
            md_table(["set", "share"], syn),
            "",
            "**isic9**: share of images flagged as pen-marked, per class (no ink was planted there).",
            "",
            md_table(["class", "flagged"], real),
        ]
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "RESULTS.md")
    args = ap.parse_args(argv)
    start = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        result = {
            "date": time.strftime("%Y-%m-%d"),
            "commit": git_commit(),
            "machine": machine_description({"threads": None}),
            "synthetic": synthetic(Path(tmp)),
            "isic9": isic9() if ISIC9.is_dir() else {},
        }
    result["load"] = load_remark(start, load_average(), cores=usable_cores())
    args.out.write_text(replace_section(args.out.read_text(), SECTION, render(result)))
    print(render(result))
    return result


if __name__ == "__main__":
    main()
