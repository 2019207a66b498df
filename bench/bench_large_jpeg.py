"""Features throughput on large JPEGs (clinical-photograph sizes): full decode vs reduced (DCT-scaled) decode.

Large JPEGs (default 1600x1100, quality 90) are made at bench time, never committed: synthetic
photographs (``ml.data.synth``, 256 px, with drapes, dark backgrounds, watermark bands and some pen
marks) upscaled bicubically. Each is read once before timing (page cache warm). Modes, in one process, serial (``workers=1``, the unit
of work a pool or Ray task runs):

* ``full``    -- ``image_features(path, reduced=False)``: one full-resolution decode;
* ``reduced`` -- ``image_features(path)``: JPEG decoded at the smallest DCT scale keeping >= 512 px.

With ``--code DIR`` the ``ml`` package is imported from another checkout (e.g. the main branch
before this change, whose ``image_features`` decodes twice and has no ``reduced``: only ``full`` is
timed there). Descriptor agreement between the modes is reported (largest absolute difference).

Run: ``make bench-large-jpeg`` or ``python -m bench.bench_large_jpeg --images 40 --repeats 3``; the
before/after pair of bench/RESULTS.md: ``--inputs /tmp/large`` here, then the same with ``--code /work/main``.
Writes ``bench/out/bench_large_jpeg.json``; ``--results bench/RESULTS.md`` replaces the section between
``<!-- large-jpeg:start -->`` and ``<!-- large-jpeg:end -->``.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    command_line,
    fmt,
    load_average,
    load_remark,
    machine_description,
    md_table,
    median,
    replace_section,
    write_json,
)

REPO = Path(__file__).resolve().parents[1]

DEFAULT_JSON = REPO / "bench" / "out" / "bench_large_jpeg.json"
SECTION_TITLE = "## Features on large JPEGs (reduced decode)"
SECTION = "large-jpeg"
AGREEMENT = ("brightness", "contrast", "saturation", "mean_r", "sharpness", "confounder_score")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=40, help="how many large JPEGs to make and time")
    p.add_argument("--width", type=int, default=1600)
    p.add_argument("--height", type=int, default=1100)
    p.add_argument("--repeats", type=int, default=3, help="timed passes per mode (median reported)")
    p.add_argument("--code", type=Path, default=None, help="import ml from this checkout (e.g. /work/main)")
    p.add_argument(
        "--inputs",
        type=Path,
        default=None,
        help="folder for the large JPEGs: reused when it holds them (so that two checkouts time the "
        "same files), else made there (default: a temporary folder)",
    )
    p.add_argument("--json", type=Path, default=DEFAULT_JSON)
    p.add_argument("--results", type=Path, default=None, help="markdown file whose large-jpeg section is replaced")
    args = p.parse_args(argv)
    if args.images < 1 or args.repeats < 1:
        p.error("--images and --repeats must be >= 1")
    return args


def make_large(args: argparse.Namespace, tmp: Path) -> tuple[list[Path], str]:
    """The large JPEGs and where they came from (reused from ``--inputs`` when it holds them)."""
    from PIL import Image

    folder = args.inputs or tmp
    made = sorted(folder.glob("large_*.jpg"))[: args.images]
    if len(made) == args.images:
        return made, (folder / "SOURCE.txt").read_text().strip()
    folder.mkdir(parents=True, exist_ok=True)

    from ml.data.synth import SynthConfig, generate

    per_class = -(-args.images // 10)
    generate(
        tmp / "synth",
        SynthConfig(
            per_class=per_class,
            size=256,
            seed=0,
            pen_rate=0.2,
            drape_rate=0.5,
            dark_background_rate=0.3,
            watermark_rate=0.5,
        ),
        progress=False,
    )
    sources = sorted((tmp / "synth").glob("*/*.jpg"))[: args.images]
    origin = "synthetic 256 px photographs (drapes, dark backgrounds, watermark bands, pen marks) upscaled"
    out = []
    for i, src in enumerate(sources):
        path = folder / f"large_{i:04d}.jpg"
        Image.open(src).convert("RGB").resize((args.width, args.height), Image.Resampling.BICUBIC).save(
            path, quality=90
        )
        out.append(path)
    source = f"{len(out)} JPEGs of {args.width}x{args.height} px (quality 90): {origin}"
    (folder / "SOURCE.txt").write_text(source + "\n")
    return out, source


def run(paths: list[Path], args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, float]]:
    from ml.quality.features import image_features

    modes = {"full": lambda p: image_features(p, reduced=False), "reduced": image_features}
    if "reduced" not in inspect.signature(image_features).parameters:  # a checkout from before the change
        modes = {"full": image_features}
    passes: dict[str, list[float]] = {m: [] for m in modes}
    tables: dict[str, list[dict[str, Any]]] = {}
    names = list(modes)
    for r in range(args.repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            tables[name] = [modes[name](p) for p in paths]
            passes[name].append(time.perf_counter() - start)
            print(f"  {name:<8} pass {r + 1}: {len(paths) / passes[name][-1]:6.2f} images/s", flush=True)
    rows = [
        {
            "mode": m,
            "images": len(paths),
            "seconds": round(median(s), 3),
            "images_per_s": round(len(paths) / median(s), 2),
            "passes": [round(x, 3) for x in s],
        }
        for m, s in passes.items()
    ]
    agreement = {}
    if len(tables) == 2:
        for key in AGREEMENT:
            diffs = [
                abs(a[key] - b[key]) / (abs(a[key]) if key == "sharpness" and a[key] else 1.0)
                for a, b in zip(tables["full"], tables["reduced"], strict=True)
            ]
            agreement[key] = max(diffs)
        agreement["phash_bits"] = max(
            bin(int(a["phash"], 16) ^ int(b["phash"], 16)).count("1")
            for a, b in zip(tables["full"], tables["reduced"], strict=True)
        )
        agreement["same_size"] = all(
            (a["width"], a["height"]) == (b["width"], b["height"])
            for a, b in zip(tables["full"], tables["reduced"], strict=True)
        )
    return rows, agreement


def markdown(rows: list[dict[str, Any]], agreement: dict[str, Any], meta: dict[str, Any]) -> str:
    base = rows[0]["images_per_s"]
    table = md_table(
        ["mode", "images", "seconds", "images/s", "vs full"],
        [
            [
                r["mode"],
                str(r["images"]),
                fmt(r["seconds"], ".2f"),
                fmt(r["images_per_s"], ".2f"),
                fmt(r["images_per_s"] / base, ".2f"),
            ]
            for r in rows
        ],
    )
    m = meta["machine"]
    notes = [
        f"Data: {meta['source']}; page cache warm; serial (`workers=1`), {meta['repeats']} passes per mode "
        "(median, modes rotate).",
        f"Code: {meta['code']}.",
        f"Machine: {m['cpu_model']}, {m['usable_cores']} usable cores, load {meta['load_average_at_start']} at "
        f"start ({load_remark(meta['load_average_at_start'], cores=m['usable_cores'])}); "
        f"Python {m['python']}, commit {m['git_commit'][:12]}, {m['date']}.",
        f"Command: `{meta['command']}`",
    ]
    if agreement:
        diffs = ", ".join(f"{k} {v:.3g}" for k, v in agreement.items() if k not in ("phash_bits", "same_size"))
        notes.insert(
            1,
            f"Reduced vs full, largest difference over the images: {diffs} (sharpness relative); "
            f"pHash up to {agreement['phash_bits']} bits; width/height identical: "
            f"{'yes' if agreement['same_size'] else 'NO'}.",
        )
    return f"{SECTION_TITLE}\n\n{table}\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.code is not None:
        sys.path.insert(0, str(args.code.resolve()))
    import ml

    code = str(Path(ml.__file__).resolve().parents[1])
    with tempfile.TemporaryDirectory(prefix="bench_large_jpeg_") as tmp:
        paths, source = make_large(args, Path(tmp))
        nbytes = sum(len(p.read_bytes()) for p in paths)
        print(f"features on {source} ({nbytes / 1e6:.1f} MB), ml from {code}", flush=True)
        load_at_start = load_average()
        rows, agreement = run(paths, args)
    meta = {
        "source": source,
        "megabytes": nbytes / 1e6,
        "repeats": args.repeats,
        "code": code,
        "machine": machine_description({}),
        "load_average_at_start": load_at_start,
        "command": command_line(argv if argv is None else [sys.argv[0], *argv]),
    }
    text = markdown(rows, agreement, meta)
    print("\n" + text)
    write_json({"rows": rows, "agreement": agreement, **meta}, args.json)
    if args.results is not None:
        old = args.results.read_text() if args.results.is_file() else ""
        args.results.write_text(replace_section(old, SECTION, text))
        print(f"updated the {SECTION} section of {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
