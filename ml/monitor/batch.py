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

Every file is resolved, refused and read by :mod:`ml.data.sources`, as the manifest's are: the
same root rule (files outside the folder, prefix or CSV's folder are ``outside_root`` and never
opened, unless ``allow_outside_root``; folder links back up are ``symlink_loop``), the same S3
download cache, one decode per image. Files that give no image (``Thumbs.db``, truncated or
zero-byte files, unsupported formats) are rows of :attr:`Batch.bad` with the reason of
:mod:`ml.data.images` and are skipped. Exact duplicates (same SHA-256) stay in the batch (they
are real inputs) and are counted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ml.data.manifest import BAD_COLUMNS, ClassMap, build_manifest, load_class_map, normalise_label
from ml.data.sources import Entry, OnImage, Source, base_of, relative
from ml.storage import Storage, is_s3

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
    return relative(path, base_of(source))


def _read(source: Source, entries: list[Entry], on_image: OnImage | None) -> tuple[list[dict], list[dict]]:
    """Records of the usable files among ``entries`` and bad rows of the others, read by
    :meth:`ml.data.sources.Source.read` as the manifest reads them (the root rule, the download cache,
    one decode per file)."""
    results = source.read_all(entries, on_image=on_image)
    records = [
        {
            "path": r.path,
            "local_path": r.local_path,
            "label": UNLABELLED,
            "source_label": UNLABELLED,
            "sha256": r.sha256,
            "bytes": r.bytes,
        }
        for r in results
        if r.ok
    ]
    bad = [{"path": r.path, "label": UNLABELLED, "reason": r.reason, "message": r.message} for r in results if not r.ok]
    return records, bad


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


def load_batch(
    source: str | Path,
    class_map: str | Path | ClassMap | None = None,
    classes: list[str] | None = None,
    storage: Storage | None = None,
    allow_outside_root: bool = False,
    on_image: OnImage | None = None,
) -> Batch:
    """Read the batch at ``source`` (see the module docstring). ``classes`` are the model's
    labels: a source class that maps to none of them is out of map. Each image is decoded once;
    ``on_image(path, rgb)`` gets the RGB pixels of every usable image from that decode (called from
    worker threads), for a caller that needs them."""
    storage = storage or Storage()
    src = str(source).rstrip("/") if is_s3(source) else os.path.abspath(source)
    if not is_s3(src) and not os.path.exists(src):
        raise FileNotFoundError(f"batch {src} does not exist")
    label_of = labeller(None if class_map is None else load_class_map(class_map), classes)
    batch_source = Source(src, storage, allow_outside_root)
    if batch_source.is_csv:
        header = storage.get_bytes(src).split(b"\n", 1)[0].decode("utf-8", "replace")
        if "label" not in [h.strip() for h in header.split(",")]:
            table = batch_source.table()
            if "path" not in table.columns:
                raise ValueError(f"{src}: a batch CSV needs a 'path' column (and optionally 'label')")
            entries = [batch_source.csv_entry(raw) for raw in table["path"]]
            return Batch(src, *_frames(*_read(batch_source, entries, on_image)), layout="csv-unlabelled")
        layout = "csv"
    else:
        if not is_s3(src) and not os.path.isdir(src):
            raise ValueError(f"batch {src} is neither a folder, an s3:// prefix nor a .csv manifest")
        listing = batch_source.list_folder()
        if not listing.nested:
            if not listing.top_files:
                raise ValueError(f"batch {src}: no files found")
            return Batch(src, *_frames(*_read(batch_source, listing.top_files, on_image)), layout="unlabelled")
        layout = "imagefolder"
    manifest = build_manifest(src, None, storage=storage, allow_outside_root=allow_outside_root, on_image=on_image)
    records = manifest.records.copy()
    mapped = records["source_label"].map(lambda s: label_of(s))
    out = records.loc[mapped.isna(), "source_label"].value_counts()
    records["label"] = mapped.fillna(UNLABELLED)
    no_label = manifest.bad["reason"] == "no_label"  # images at the top of a class layout, empty CSV labels
    unread = [batch_source.entry(p) for p in manifest.bad.loc[no_label, "path"]]
    extra, extra_bad = _read(batch_source, unread, on_image)
    recs, bad = _frames(
        [*records[BATCH_COLUMNS].to_dict("records"), *extra],
        [*manifest.bad.loc[~no_label].to_dict("records"), *extra_bad],
    )
    return Batch(src, recs, bad, {str(k): int(v) for k, v in out.items()}, layout)
