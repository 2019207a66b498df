"""Manifest-features throughput: ``ml.quality.features.compute_features`` in images/s, side by side.

Modes, all on the same records in one run:

* ``serial``  -- ``workers=1`` (plain loop in this process);
* ``pool-2``  -- ``workers=2`` (spawn-based process pool; pool start-up and worker imports included);
* ``ray-2``   -- ``ray.init(num_cpus=2)`` then the Ray path (one task per chunk); ``ray.init`` is timed
  separately, worker start-up inside the first pass is included.

Every file is read once before timing (page cache warm for every mode alike); with ``--repeats``
the modes run in rotating order and the median pass counts. The feature tables of all modes are
compared (they must be identical). Data: ``../shared/data/isic9`` (train + test), or ``--data``.

Run: ``make bench-features`` (all images) or ``python -m bench.bench_features --limit 200``.
Writes ``bench/out/bench_features.json``; ``--results bench/RESULTS.md`` replaces the section between
``<!-- features:start -->`` and ``<!-- features:end -->`` (appended when absent; other sections kept).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import (
    command_line,
    fmt,
    load_average,
    machine_description,
    md_table,
    median,
    replace_section,
    write_json,
)

REPO = Path(__file__).resolve().parents[1]

ISIC9 = REPO.parent / "shared" / "data" / "isic9"
DEFAULT_JSON = REPO / "bench" / "out" / "bench_features.json"
SECTION_TITLE = "## Manifest features throughput"
SECTION = "features"
COMPARED = ("sha256", "phash", "decode_ok", "width", "height", "brightness", "sharpness", "confounder_score")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=ISIC9, help="ImageFolder (default ../shared/data/isic9)")
    p.add_argument("--limit", type=int, default=None, help="use at most N images (evenly spread over the set)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="process counts to time")
    p.add_argument("--ray-cpus", type=int, default=2, help="CPUs for ray.init (0 skips the Ray mode)")
    p.add_argument("--repeats", type=int, default=1, help="timed passes per mode (median reported)")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help="raw results")
    p.add_argument("--results", type=Path, default=None, help="markdown file whose features section is replaced")
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be >= 1")
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    if not args.data.is_dir():
        p.error(f"--data {args.data} is not a folder")
    return args


# --------------------------------------------------------------------------- data
def load_records(args: argparse.Namespace) -> tuple[Any, str]:
    """Records (path, label, ...) to compute features on, and a description of where they came from."""
    from ml.data.manifest import build_manifest

    records = build_manifest(args.data, check=False).records
    if args.limit and args.limit < len(records):
        step = len(records) / args.limit  # evenly spread: every class and split is represented
        records = records.iloc[[int(i * step) for i in range(args.limit)]]
    return records.reset_index(drop=True), str(args.data)


def warm_page_cache(records) -> int:
    total = 0
    for p in records["local_path"]:
        total += len(Path(p).read_bytes())
    return total


# --------------------------------------------------------------------------- modes
def _run(records, mode: dict[str, Any]):
    from ml.quality.features import compute_features

    if mode["kind"] == "ray":
        return compute_features(records, ray_address="auto")  # Ray is initialised already: reused
    return compute_features(records, workers=mode["workers"])


def _same(a, b) -> bool:
    import pandas as pd

    cols = [c for c in COMPARED if c in a]
    return bool(pd.DataFrame.equals(a[cols].reset_index(drop=True), b[cols].reset_index(drop=True)))


def run_modes(records, args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    modes = [
        {"name": "serial" if w <= 1 else f"pool-{w}", "kind": "local", "workers": w, "passes": []} for w in args.workers
    ]
    ray_info: dict[str, Any] = {}
    if args.ray_cpus > 0:
        import ray

        start = time.perf_counter()
        ray.init(
            num_cpus=args.ray_cpus,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}},
        )
        ray_info = {
            "init_seconds": round(time.perf_counter() - start, 3),
            "num_cpus": args.ray_cpus,
            "ray_version": ray.__version__,
        }
        modes.append({"name": f"ray-{args.ray_cpus}", "kind": "ray", "workers": args.ray_cpus, "passes": []})
    import ml.quality.features  # noqa: F401  (imported before timing: the serial pass should not pay for it)

    reference = None
    try:
        for r in range(args.repeats):
            order = modes[r % len(modes) :] + modes[: r % len(modes)]  # rotate: no mode always goes first
            for mode in order:
                start = time.perf_counter()
                feats = _run(records, mode)
                seconds = time.perf_counter() - start
                mode["passes"].append(seconds)
                if reference is None:
                    reference = feats
                mode["identical"] = mode.get("identical", True) and _same(reference, feats)
                print(
                    f"  {mode['name']:<8} pass {r + 1}: {len(records) / seconds:8.1f} images/s ({seconds:.2f} s)",
                    flush=True,
                )
    finally:
        if args.ray_cpus > 0:
            import ray

            ray.shutdown()
    n = len(records)
    serial = next((median(m["passes"]) for m in modes if m["name"] == "serial"), None)
    rows = []
    for m in modes:
        sec = median(m["passes"])
        rows.append(
            {
                "mode": m["name"],
                "workers": m["workers"],
                "images": n,
                "seconds": round(sec, 3),
                "images_per_s": round(n / sec, 2),
                "speedup_vs_serial": round(serial / sec, 3) if serial else None,
                "passes": [round(s, 3) for s in m["passes"]],
                "identical_features": m["identical"],
            }
        )
    return rows, ray_info


# --------------------------------------------------------------------------- output
def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    table = md_table(
        ["mode", "workers / CPUs", "images", "seconds", "images/s", "speed-up vs serial", "same features"],
        [
            [
                r["mode"],
                str(r["workers"]),
                str(r["images"]),
                fmt(r["seconds"], ".2f"),
                fmt(r["images_per_s"], ".1f"),
                fmt(r["speedup_vs_serial"], ".2f"),
                "yes" if r["identical_features"] else "NO",
            ]
            for r in rows
        ],
    )
    m = meta["machine"]
    ray = meta.get("ray") or {}
    notes = [
        f"Data: {meta['source']} ({meta['images']} images, {meta['megabytes']:.1f} MB, page cache warmed first).",
        f"Machine: {m['cpu_model']}, {m['usable_cores']} usable cores, load {meta['load_average_at_start']} at start; "
        f"Python {m['python']}, commit {m['git_commit'][:12]}, {m['date']}.",
        f"Timed passes per mode: {meta['repeats']} (median; modes rotate between passes). Pool times include "
        "spawning the workers and their imports; the Ray time excludes `ray.init`"
        + (f" ({ray['init_seconds']:.1f} s, Ray {ray['ray_version']})" if ray else "")
        + " but includes its worker start-up.",
        f"Command: `{meta['command']}`",
    ]
    return f"{SECTION_TITLE}\n\n{table}\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    records, source = load_records(args)
    nbytes = warm_page_cache(records)
    print(f"features throughput on {len(records)} images from {source}", flush=True)
    load_at_start = load_average()
    rows, ray_info = run_modes(records, args)
    meta = {
        "source": source,
        "images": len(records),
        "megabytes": nbytes / 1e6,
        "repeats": args.repeats,
        "ray": ray_info,
        "machine": machine_description({}),
        "load_average_at_start": load_at_start,
        "command": command_line(argv if argv is None else [sys.argv[0], *argv]),
    }
    text = markdown(rows, meta)
    print("\n" + text)
    write_json({"rows": rows, **meta}, args.json)
    print(f"wrote {args.json}")
    if args.results is not None:
        old = args.results.read_text() if args.results.is_file() else ""
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(replace_section(old, SECTION, text))
        print(f"updated the features section of {args.results}")
    return 0 if all(r["identical_features"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
