"""A batch to monitor: every image file with its label when it has one, and what was left out.

Sources
-------
* an ImageFolder (SD-198 layout: a folder per source class), local or ``s3://``, read by
  :func:`ml.data.manifest.build_manifest` and mapped through a class map (e.g. ``sd198_to_10``):
  a source class the class map (or, without one, the model's classes) does not cover is
  **out of map**: counted per source class in :attr:`Batch.out_of_map`, its images kept as
  unlabelled inputs (they still show covariate drift and predicted-class drift);
* an unlabelled folder or S3 prefix (image files at its top, no class folders);
* a CSV manifest with a ``path`` column and optionally ``label`` (empty labels are unlabelled).

Files that give no image (``Thumbs.db``, truncated or zero-byte files, unsupported formats) are
rows of :attr:`Batch.bad` with the reason of :mod:`ml.data.images` and are skipped. Exact
duplicates (same SHA-256) stay in the batch (they are real inputs) and are counted.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd

from ml.data.images import check_image, path_problem
from ml.data.manifest import BAD_COLUMNS, ClassMap, build_manifest, load_class_map, normalise_label
from ml.storage import Storage, is_s3, sha256_file

BATCH_COLUMNS = ["path", "local_path", "label", "source_label", "sha256", "bytes"]
UNLABELLED = ""


@dataclass
class Batch:
    """``records``: usable images (``label`` is ``""`` when unlabelled or out of map);
    ``bad``: files left out with their reason; ``out_of_map``: images per source class that the
    class map does not cover."""

    source: str
    records: pd.DataFrame
    bad: pd.DataFrame
    out_of_map: dict[str, int] = field(default_factory=dict)
    layout: str = "imagefolder"

    @property
    def labelled(self) -> pd.Series:
        return self.records["label"] != UNLABELLED

    @property
    def duplicate_groups(self) -> list[list[str]]:
        """Paths of images with the same content, one list per group of two or more."""
        groups = self.records.groupby("sha256")["path"].apply(list)
        return [sorted(g) for g in groups if len(g) > 1]

    def summary(self) -> dict:
        return {
            "source": self.source,
            "layout": self.layout,
            "n_images": int(len(self.records)),
            "n_labelled": int(self.labelled.sum()),
            "n_unlabelled": int((~self.labelled).sum()),
            "out_of_map": dict(self.out_of_map),
            "bad_files": [{"path": p, "reason": r} for p, r in zip(self.bad["path"], self.bad["reason"], strict=True)],
            "duplicate_groups": self.duplicate_groups,
        }

    def report_lines(self, limit: int = 20) -> list[str]:
        """What a person reads about the batch's inputs: out-of-map classes with counts, every
        left-out file (up to ``limit``) with its reason, duplicate groups."""
        lines = [f"{len(self.records)} image(s) ({int(self.labelled.sum())} labelled) from {self.source}"]
        if self.out_of_map:
            counts = ", ".join(f"{k} ({n})" for k, n in sorted(self.out_of_map.items()))
            lines.append(f"out-of-map source classes, kept as unlabelled: {counts}")
        if len(self.bad):
            lines.append(f"{len(self.bad)} file(s) skipped:")
            lines += [
                f"  {_short(p, self.source)}: {r}"
                for p, r in zip(self.bad["path"][:limit], self.bad["reason"][:limit], strict=True)
            ]
            if len(self.bad) > limit:
                lines.append(f"  ... and {len(self.bad) - limit} more")
        for group in self.duplicate_groups[:limit]:
            lines.append("duplicates: " + ", ".join(_short(p, self.source) for p in group))
        return lines


def _short(path: str, source: str) -> str:
    base = posixpath.dirname(source) if source.lower().endswith(".csv") else source.rstrip("/")
    return path[len(base) + 1 :] if path.startswith(base + "/") else path


def _top_level(src: str, storage: Storage) -> tuple[list[str], bool]:
    """Non-hidden files directly under ``src`` and whether it has any sub-folder holding files."""
    if is_s3(src):
        keys = [k for k in storage.list(src + "/") if not k.endswith("/")]
        rels = [k[len(src) + 1 :] for k in keys]
        rels = [r for r in rels if not any(part.startswith(".") for part in r.split("/"))]
        return [f"{src}/{r}" for r in rels if "/" not in r], any("/" in r for r in rels)
    entries = sorted(e for e in os.listdir(src) if not e.startswith("."))
    files = [os.path.join(src, e) for e in entries if not os.path.isdir(os.path.join(src, e))]
    nested = any(
        os.path.isdir(os.path.join(src, e)) and any(not n.startswith(".") for n in os.listdir(os.path.join(src, e)))
        for e in entries
    )
    return files, nested


def _inspect(path: str, storage: Storage) -> tuple[dict | None, dict | None]:
    """``(record, None)`` for a decodable image, ``(None, bad_row)`` otherwise (S3 objects are
    materialised under ``<data_root>/s3cache`` like the manifest's)."""
    if is_s3(path):
        data = storage.get_bytes(path)
        digest = hashlib.sha256(data).hexdigest()
        local = (
            Path(storage.settings.data_root) / "s3cache" / digest[:2] / f"{digest}{PurePosixPath(path).suffix.lower()}"
        )
        if not local.is_file():
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(data)
    else:
        problem = path_problem(path)
        if problem is not None:
            return None, {"path": path, "label": UNLABELLED, "reason": problem[0], "message": problem[1]}
        local = Path(path)
    check = check_image(local)
    if not check.ok:
        return None, {"path": path, "label": UNLABELLED, "reason": check.reason, "message": check.message}
    return {
        "path": path,
        "local_path": str(local),
        "label": UNLABELLED,
        "source_label": UNLABELLED,
        "sha256": sha256_file(local),
        "bytes": local.stat().st_size,
    }, None


def _inspect_all(paths: list[str], storage: Storage) -> tuple[list[dict], list[dict]]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda p: _inspect(p, storage), paths))
    return [r for r, _ in results if r], [b for _, b in results if b]


def _frames(records: list[dict], bad: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    recs = pd.DataFrame(records, columns=BATCH_COLUMNS).sort_values("path", ignore_index=True)
    return recs, pd.DataFrame(bad, columns=BAD_COLUMNS).sort_values("path", ignore_index=True)


def labeller(class_map: ClassMap | None, classes: list[str] | None):
    """source label -> model label, or None when out of map."""
    known = {normalise_label(c): c for c in classes} if classes else None

    def label_of(source_label: str) -> str | None:
        if class_map is not None:
            label = class_map.lookup(source_label)
            return label if label is not None and (known is None or normalise_label(label) in known) else None
        if known is None:
            return source_label
        return known.get(normalise_label(source_label))

    return label_of


def _csv_paths(src: str, storage: Storage, allow_outside_root: bool) -> tuple[list[str], list[dict]]:
    """Paths of a CSV without a ``label`` column (relative ones against its folder)."""
    import io

    table = pd.read_csv(io.BytesIO(storage.get_bytes(src)), dtype=str, keep_default_na=False)
    if "path" not in table.columns:
        raise ValueError(f"{src}: a batch CSV needs a 'path' column (and optionally 'label')")
    base = posixpath.dirname(src) if is_s3(src) else os.path.dirname(src)
    paths, bad = [], []
    for raw in table["path"]:
        raw = raw.strip()
        path = (
            raw
            if is_s3(raw) or os.path.isabs(raw)
            else (posixpath.join(base, raw) if is_s3(base) else os.path.abspath(os.path.join(base, raw)))
        )
        inside = (
            path.startswith(base + "/")
            if is_s3(path)
            else os.path.commonpath([os.path.realpath(path), os.path.realpath(base)]) == os.path.realpath(base)
        )
        if not inside and not allow_outside_root:
            bad.append(
                {
                    "path": path,
                    "label": UNLABELLED,
                    "reason": "outside_root",
                    "message": f"{raw} is outside the CSV's folder {base}; not read",
                }
            )
        else:
            paths.append(path)
    return paths, bad


def load_batch(
    source: str | Path,
    class_map: str | Path | ClassMap | None = None,
    classes: list[str] | None = None,
    storage: Storage | None = None,
    allow_outside_root: bool = False,
) -> Batch:
    """Read the batch at ``source`` (see the module docstring). ``classes`` are the model's
    labels: a source class that maps to none of them is out of map."""
    storage = storage or Storage()
    src = str(source).rstrip("/") if is_s3(source) else os.path.abspath(source)
    if not is_s3(src) and not os.path.exists(src):
        raise FileNotFoundError(f"batch {src} does not exist")
    label_of = labeller(None if class_map is None else load_class_map(class_map), classes)
    if src.lower().endswith(".csv"):
        header = storage.get_bytes(src).split(b"\n", 1)[0].decode("utf-8", "replace")
        if "label" not in [h.strip() for h in header.split(",")]:
            paths, outside = _csv_paths(src, storage, allow_outside_root)
            records, bad = _inspect_all(paths, storage)
            return Batch(src, *_frames(records, outside + bad), layout="csv-unlabelled")
        layout = "csv"
    else:
        if not is_s3(src) and not os.path.isdir(src):
            raise ValueError(f"batch {src} is neither a folder, an s3:// prefix nor a .csv manifest")
        top_files, nested = _top_level(src, storage)
        if not nested:
            if not top_files:
                raise ValueError(f"batch {src}: no files found")
            records, bad = _inspect_all(top_files, storage)
            return Batch(src, *_frames(records, bad), layout="unlabelled")
        layout = "imagefolder"
    manifest = build_manifest(src, None, storage=storage, allow_outside_root=allow_outside_root)
    records = manifest.records.copy()
    mapped = records["source_label"].map(lambda s: label_of(s))
    out = records.loc[mapped.isna(), "source_label"].value_counts()
    records["label"] = mapped.fillna(UNLABELLED)
    no_label = manifest.bad["reason"] == "no_label"  # images at the top of a class layout, empty CSV labels
    extra, extra_bad = _inspect_all(manifest.bad.loc[no_label, "path"].tolist(), storage)
    recs, bad = _frames(
        [*records[BATCH_COLUMNS].to_dict("records"), *extra],
        [*manifest.bad.loc[~no_label].to_dict("records"), *extra_bad],
    )
    return Batch(src, recs, bad, {str(k): int(v) for k, v in out.items()}, layout)
