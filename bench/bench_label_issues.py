"""Label issues: how well the shipped method finds planted label flips, and what it finds on isic9.

1. **Planted flips.** The synthetic set of tests/integration/test_label_issues.py (10 classes x 40
   images, 64 px, seed 3), features once, then ``--draws`` draws of 5% flipped labels, each scored
   by the probe settings and cleanlab filters compared (the shipped default first): recall and
   precision of the flagged ``likely_mislabelled`` images against the flips.
2. **isic9.** Every usable image of ../shared/data/isic9 (all splits) at ``--size`` px through the
   same library calls the flow's tasks make: how many of the files that sit under two class folders
   (the label conflicts validation knows) are flagged, how many new issues are raised, the noise
   table, stage times. Writes ``bench/out/label_issues/isic9_issues.csv`` and
   ``isic9_new_issues.png`` (the 20 worst new issues, for a person to look at).

    python -m bench.bench_label_issues [--draws 8] [--size 128]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    fmt,
    git_commit,
    load_average,
    load_remark,
    machine_description,
    md_table,
    replace_section,
    usable_cores,
    write_json,
)

REPO = Path(__file__).resolve().parents[1]
ISIC9 = REPO.parent / "shared" / "data" / "isic9"
SECTION = "label-issues"
SETTINGS = [
    (0.1, "prune_by_class"),
    (0.01, "prune_by_class"),
    (0.1, "prune_by_noise_rate"),
    (0.01, "prune_by_noise_rate"),
]


def planted(work: Path, draws: int) -> dict[str, Any]:
    from cleanlab.filter import find_label_issues

    from ml.data.cache import build_cache
    from ml.data.manifest import build_manifest
    from ml.data.synth import SynthConfig, generate
    from ml.quality import label_issues as li
    from ml.train.probe import pretrained_features

    data = work / "synth"
    if not data.is_dir():
        generate(data, SynthConfig(per_class=40, size=64, seed=3), progress=False)
    manifest = build_manifest(data)
    cache = build_cache(manifest, 64, work / "cache")
    started = time.perf_counter()
    features = pretrained_features(cache.images, "efficientnet_lite0")
    feature_s = time.perf_counter() - started
    labels, n, k = np.asarray(cache.labels), len(cache.labels), len(cache.classes)
    rows = []
    for c, how in SETTINGS:
        scores = []
        for seed in range(draws):
            rng = np.random.default_rng(seed)
            flip = rng.choice(n, round(0.05 * n), replace=False)
            given = labels.copy()
            given[flip] = (labels[flip] + rng.integers(1, k, len(flip))) % k
            probs = li.cross_fitted_probs(features, given, k, c=c)
            mask = find_label_issues(given, probs, filter_by=how, n_jobs=1)
            hit = int(mask[flip].sum())
            scores.append((hit / max(int(mask.sum()), 1), hit / len(flip)))
        s = np.array(scores)
        rows.append(
            {
                "c": c,
                "filter": how,
                "precision": float(s[:, 0].mean()),
                "precision_min": float(s[:, 0].min()),
                "recall": float(s[:, 1].mean()),
                "recall_min": float(s[:, 1].min()),
            }
        )
    return {"images": n, "planted": round(0.05 * n), "draws": draws, "feature_seconds": feature_s, "rows": rows}


def isic9(work: Path, size: int) -> dict[str, Any]:
    from ml.data.cache import build_cache
    from ml.data.duplicates import policy_max_distance
    from ml.data.manifest import build_manifest
    from ml.quality import label_issues as li
    from ml.quality.config import LabelIssuesConfig
    from ml.train.probe import pretrained_features

    cfg = LabelIssuesConfig()
    times = {}
    t = time.perf_counter()
    manifest = build_manifest(ISIC9, workers=2)
    cache = build_cache(manifest, size, work / "cache")
    times["manifest_and_decode"] = time.perf_counter() - t
    t = time.perf_counter()
    features = pretrained_features(cache.images, cfg.arch)
    times["features"] = time.perf_counter() - t
    t = time.perf_counter()
    labels = np.asarray(cache.labels)
    probs = li.cross_fitted_probs(features, labels, len(cache.classes), cfg.folds, cfg.c, cfg.seed)
    times["probes"] = time.perf_counter() - t
    t = time.perf_counter()
    groups = li.copy_groups(cache.images, manifest.records["sha256"].tolist(), policy_max_distance())
    paths = manifest.records["path"].tolist()
    issues = li.find_issues(paths, labels, cache.classes, probs, features, groups, cfg.neighbours)
    noise = li.noise_table(labels, probs, cache.classes, top=6)
    times["issues"] = time.perf_counter() - t
    records = manifest.records
    per_sha = records.groupby("sha256")["label"].nunique()
    conflicts = set(records.loc[records["sha256"].isin(per_sha[per_sha > 1].index), "path"])
    flagged = set(issues["path"])
    known = issues[issues["path"].isin(conflicts)]
    new = issues[~issues["path"].isin(conflicts)]
    work.mkdir(parents=True, exist_ok=True)
    issues.to_csv(work / "isic9_issues.csv", index=False)
    _sheet(new.head(20), paths, cache.images, work / "isic9_new_issues.png")
    reasons = new["reason"].str.split(";").explode().value_counts()
    return {
        "images": len(records),
        "size": size,
        "probe_accuracy": float((probs.argmax(axis=1) == labels).mean()),
        "flagged": len(flagged),
        "conflict_files": len(conflicts),
        "conflicts_flagged": len(known),
        "conflicts_flagged_as_copy": int(known["reason"].str.contains("near_duplicate_other_label").sum()),
        "conflicts_flagged_as_mislabelled": int(known["reason"].str.contains("likely_mislabelled").sum()),
        "new_issues": len(new),
        "new_by_reason": {str(r): int(n) for r, n in reasons.items()},
        "noise": noise.to_dict(orient="records"),
        "times": times,
        "worst_new": new.head(20)[["path", "given_label", "suggested_label", "score", "reason"]].to_dict(
            orient="records"
        ),
    }


def _sheet(rows, paths: Sequence[str], images, out: Path) -> None:
    """A 5-wide contact sheet of ``rows``' images with their number (the RESULTS table's order)."""
    from PIL import Image, ImageDraw

    where = {p: i for i, p in enumerate(paths)}
    side = images.shape[1]
    sheet = Image.new("RGB", (5 * side, max(1, -(-len(rows) // 5)) * (side + 14)), "white")
    draw = ImageDraw.Draw(sheet)
    for n, path in enumerate(rows["path"]):
        x, y = (n % 5) * side, (n // 5) * (side + 14)
        sheet.paste(Image.fromarray(np.asarray(images[where[path]])), (x, y + 14))
        draw.text((x + 2, y + 1), str(n + 1), fill="black")
    sheet.save(out)


def render(result: dict[str, Any]) -> str:
    p, r = result["planted"], result["isic9"]
    rows = [
        [
            fmt(x["c"], "g"),
            x["filter"] + (" (shipped)" if n == 0 else ""),
            f"{fmt(x['recall'], '.2f')} (min {fmt(x['recall_min'], '.2f')})",
            f"{fmt(x['precision'], '.2f')} (min {fmt(x['precision_min'], '.2f')})",
        ]
        for n, x in enumerate(p["rows"])
    ]
    noise = [[x["given_label"], x["true_label"], fmt(x["share"], ".3f"), str(x["images"])] for x in r["noise"]]
    times = ", ".join(f"{k} {v:.0f} s" for k, v in r["times"].items())
    return "\n".join(
        [
            f"Measured {result['date']} at commit {result['commit'][:8]} on {result['machine']['cpu_model']} "
            f"({result['machine']['usable_cores']} cores); {result['load']}.",
            "",
            f"**Planted flips** (synthetic, {p['images']} images at 64 px, {p['planted']} flipped per draw, "
            f"{p['draws']} draws; features {p['feature_seconds']:.0f} s): recall and precision of the "
            "`likely_mislabelled` flags against the flips, mean (worst draw).",
            "",
            md_table(["probe C", "cleanlab filter", "recall", "precision"], rows),
            "",
            f"**isic9** ({r['images']} usable images, all splits, {r['size']} px; {times}): the probes' "
            f"out-of-sample accuracy {r['probe_accuracy']:.3f}; {r['flagged']} images flagged. Of the "
            f"{r['conflict_files']} files whose picture sits under two class folders, {r['conflicts_flagged']} "
            f"are flagged ({r['conflicts_flagged_as_copy']} as a copy under another label, "
            f"{r['conflicts_flagged_as_mislabelled']} also as likely mislabelled). New issues: "
            f"{r['new_issues']} ({', '.join(f'{k} {v}' for k, v in r['new_by_reason'].items())}).",
            "",
            "Estimated noise (cleanlab's joint of given and true label, largest off-diagonal cells):",
            "",
            md_table(["given label", "true label (estimated)", "share of the set", "images"], noise),
        ]
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=8)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--work-dir", type=Path, default=REPO / "bench" / "out" / "label_issues")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "RESULTS.md")
    args = ap.parse_args(argv)
    if not ISIC9.is_dir():
        raise SystemExit(f"bench-label-issues needs the real images at {ISIC9} (see its NOTICE.md)")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    load_start = load_average()
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "commit": git_commit(),
        "machine": machine_description({"threads": None}),
        "planted": planted(args.work_dir, args.draws),
        "isic9": isic9(args.work_dir, args.size),
    }
    result["load"] = load_remark(load_start, load_average(), cores=usable_cores())
    write_json(result, args.work_dir / "results.json")
    args.out.write_text(replace_section(args.out.read_text(), SECTION, render(result)))
    print(render(result))
    return result


if __name__ == "__main__":
    main()
