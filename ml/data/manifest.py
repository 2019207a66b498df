"""Dataset manifests: every input file with its label, split, SHA-256 and size, and a content version.

Sources
-------
* an ImageFolder directory, ``<root>/<class>/...`` or, when every top-level folder is a split name
  (train/val/valid/validation/test), ``<root>/<split>/<class>/...``;
* a CSV file with columns ``path,label[,split]``; relative paths are resolved against the CSV's folder,
  absolute paths and ``s3://`` URIs are used as they are.

The dataset root is the folder (or S3 prefix) of an ImageFolder, or the CSV's folder (for a manifest
saved by :meth:`Manifest.save`, the root of the source its sidecar names). Files outside it
(a CSV row ``/etc/passwd`` or ``../x.jpg``, a symbolic link leading out of the folder, an S3 key outside
the prefix) are refused with reason ``outside_root`` and never opened, unless
``build_manifest(..., allow_outside_root=True)``.

Both may be local or under ``s3://bucket/prefix``. S3 objects are materialised in a content-addressed
folder (``<settings.data_root>/s3cache/<sha256[:2]>/<sha256><suffix>``); ``path`` keeps the URI and
``local_path`` names the materialised file. The root rule, the listing, the download cache and the one
decode per file are those of :mod:`ml.data.sources`, which the monitor's batch loader uses too.

Folder rules: files whose name or folder starts with ``.`` are ignored, as are non-image files above
the class folders (README, NOTICE, CSV manifests); every other file is either a record or a row of
``Manifest.bad`` with its reason (image and file reasons of :mod:`ml.data.images`, among them
``broken_symlink`` and ``not_a_file``, plus ``no_label``, ``unmapped_label``, ``duplicate_entry``,
``outside_root`` and ``symlink_loop``). Class folders are followed through symbolic links (a link
back into one of its own parent folders is ``symlink_loop``). A class with no usable image (an empty
folder, or every file left out) is named in ``Manifest.empty_classes``; a class the class map promises
but no usable image carries is named in ``Manifest.missing_classes``; both are logged as warnings.

A manifest can be derived from another by setting files aside (:meth:`Manifest.set_aside`, e.g. the
validation's quarantine, :mod:`ml.quality.quarantine`): the new version lists them in
``Manifest.quarantined`` with their reasons and records its parent's version (``parent_version``);
the files themselves are never touched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

import pandas as pd
import yaml

from ml.data.images import image_signature
from ml.data.sources import IMAGE_SUFFIXES, Entry, FileResult, OnImage, Source, base_of, read_table, relative
from ml.storage import Storage, StorageError, atomic_write, is_s3

RECORD_COLUMNS = ["path", "local_path", "label", "source_label", "split", "sha256", "bytes"]
BAD_COLUMNS = ["path", "label", "reason", "message"]
QUARANTINE_COLUMNS = ["path", "label", "split", "reason", "group", "note"]
"""Files a derived manifest set aside: ``reason`` the finding(s) that named it (``;``-joined),
``group`` the content it shares with the other members of its group (12 hex digits of its SHA-256),
``note`` what was found (e.g. the labels a copy carries, a reason it was already left out)."""
SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
DATA_DIR = Path(__file__).resolve().parent / "class_maps"
UNREAD_REASONS = frozenset({"outside_root", "symlink_loop", "broken_symlink", "not_a_file", "missing_file"})
"""Bad-row reasons of files that are never opened (by the manifest nor by anything reading its bad rows)."""

logger = logging.getLogger(__name__)


# --- class maps --------------------------------------------------------------------------------


def normalise_label(label: str) -> str:
    """Matching key of a source label: NFKC, Unicode case folding, letters and digits only, in any
    script ("Bowen's_Disease" -> "bowensdisease", "Ekzém" -> "ekzém", "湿疹" -> "湿疹"): two labels
    match only when their letters do, so two non-Latin names never collapse into one empty key."""
    folded = unicodedata.normalize("NFKC", label).casefold()
    return "".join(ch for ch in folded if ch.isalnum())


@dataclass(frozen=True)
class ClassMap:
    """``{model_label: (source labels...)}`` with a normalised lookup; a model label also matches itself."""

    groups: dict[str, tuple[str, ...]]
    index: dict[str, str]

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Iterable[str]], origin: str = "class map") -> ClassMap:
        if not isinstance(mapping, Mapping) or not mapping:
            raise ValueError(f"{origin}: expected a non-empty mapping of model label -> list of source labels")
        groups: dict[str, tuple[str, ...]] = {}
        index: dict[str, str] = {}
        for label, sources in mapping.items():
            if isinstance(sources, str) or not isinstance(sources, Iterable):
                raise ValueError(f"{origin}: the sources of '{label}' must be a list of labels")
            groups[str(label)] = tuple(str(s) for s in sources)
            for source in (str(label), *groups[str(label)]):
                _add_to_index(index, source, str(label), origin)
        return cls(groups, index)

    @property
    def labels(self) -> list[str]:
        return sorted(self.groups)

    def lookup(self, source_label: str) -> str | None:
        """The model label of ``source_label``, or None when the map does not cover it."""
        return self.index.get(normalise_label(source_label))


def _add_to_index(index: dict[str, str], source: str, label: str, origin: str) -> None:
    key = normalise_label(source)
    if index.get(key, label) != label:
        raise ValueError(f"{origin}: source label '{source}' is mapped to both '{index[key]}' and '{label}'")
    index[key] = label


def load_class_map(path_or_name: ClassMap | str | Path | Mapping[str, Iterable[str]]) -> ClassMap:
    """Load a class map from a YAML file, a mapping, or a shipped name (e.g. ``sd198_to_10``)."""
    if isinstance(path_or_name, ClassMap):
        return path_or_name
    if isinstance(path_or_name, Mapping):
        return ClassMap.from_mapping(path_or_name)
    shipped = DATA_DIR / f"{path_or_name}.yaml"
    path = shipped if shipped.is_file() else Path(path_or_name)
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in DATA_DIR.glob("*.yaml")))
        raise FileNotFoundError(f"class map '{path_or_name}' is neither a file nor a shipped map ({names})")
    return ClassMap.from_mapping(yaml.safe_load(path.read_text()), origin=str(path))


# --- the manifest ------------------------------------------------------------------------------


@dataclass
class Manifest:
    """Records (usable images), bad inputs (with reasons), classes and the source they came from.

    ``classes`` are the labels with at least one record. ``empty_classes`` are the source labels (class
    folders, CSV labels) the class map covers, or all without one, that gave no usable image;
    ``class_map_labels`` are the labels the class map promises (None without a class map).
    A manifest derived by :meth:`set_aside` names the version it came from (``parent_version``) and the
    files it set aside (``quarantined``, :data:`QUARANTINE_COLUMNS`); both are None otherwise.
    ``notes`` are the lines said about the source that are not bad files: hidden entries holding
    images, a JPEG named .png, data appended after an image, a multi-page TIFF, and the class-level
    :meth:`warnings` (the validation summary lists them).
    """

    records: pd.DataFrame
    bad: pd.DataFrame
    classes: list[str]
    source: str
    empty_classes: list[str] = field(default_factory=list)
    class_map_labels: list[str] | None = None
    parent_version: str | None = None
    quarantined: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def expected_classes(self) -> list[str]:
        """The classes a model of this data is meant to tell apart: the class map's labels, else ``classes``
        (what validation should be given, so that missing classes fail it)."""
        return list(self.classes) if self.class_map_labels is None else list(self.class_map_labels)

    @property
    def missing_classes(self) -> list[str]:
        """Labels the class map promises that no usable image carries."""
        return sorted(set(self.expected_classes) - set(self.classes))

    @property
    def version(self) -> str:
        """First 16 hex chars of the SHA-256 of the sorted (relative path, sha256, label, split) rows.

        Paths are taken relative to the source folder (the CSV's folder for a CSV), so the same files
        give the same version whether read locally, from S3, as an ImageFolder or through a CSV.
        """
        base = base_of(self.source)
        rows = sorted(
            [relative(p, base), s, lab, sp]
            for p, s, lab, sp in zip(
                self.records["path"], self.records["sha256"], self.records["label"], self.records["split"], strict=True
            )
        )
        return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]

    def summary(self) -> dict:
        """Counts per class and split, bad counts per reason, empty and missing classes, and the version
        (for a derived manifest also its parent's version and the files set aside per reason)."""
        counts = self.records.groupby(["label", "split"]).size()
        per_class: dict[str, dict[str, int]] = {c: {} for c in self.classes}
        for (label, split), n in counts.items():
            per_class[label][split or "unassigned"] = int(n)
        derived = (
            {
                "parent_version": self.parent_version,
                "quarantined": {r: int(n) for r, n in self.quarantined["reason"].value_counts().items()},
            }
            if self.quarantined is not None
            else {}
        )
        return {
            "version": self.version,
            "source": self.source,
            "n_records": len(self.records),
            "n_bad": len(self.bad),
            "classes": list(self.classes),
            "counts": per_class,
            "splits": {s or "unassigned": int(n) for s, n in self.records["split"].value_counts().items()},
            "bad": {r: int(n) for r, n in self.bad["reason"].value_counts().items()},
            "empty_classes": list(self.empty_classes),
            "missing_classes": self.missing_classes,
            **derived,
        }

    def set_aside(self, files: pd.DataFrame) -> Manifest:
        """A new version of this manifest without ``files`` (:data:`QUARANTINE_COLUMNS`; matched by
        ``path``, among the records and the bad rows alike): they are listed in ``quarantined`` (after
        any this manifest set aside already), ``parent_version`` is this manifest's version, classes
        and empty classes are those of the records left. Nothing is read or written."""
        paths = set(files["path"])
        records = self.records[~self.records["path"].isin(paths)].reset_index(drop=True)
        emptied = set(self.records["source_label"]) - set(records["source_label"])
        listed = files[QUARANTINE_COLUMNS].fillna("").astype(str)
        if self.quarantined is not None:
            listed = pd.concat([self.quarantined, listed], ignore_index=True)
        return replace(
            self,
            records=records,
            bad=self.bad[~self.bad["path"].isin(paths)].reset_index(drop=True),
            classes=sorted(records["label"].unique()),
            empty_classes=sorted(set(self.empty_classes) | emptied),
            parent_version=self.version,
            quarantined=listed.reset_index(drop=True),
        )

    def warnings(self) -> list[str]:
        """One line per class-level problem: empty classes, classes the class map promises but lacks."""
        lines = [f"class '{c}' has no usable image ({self._left_out_of(c)})" for c in self.empty_classes]
        if self.missing_classes:
            lines.append(
                f"{len(self.missing_classes)} class(es) of the class map have no usable image: "
                + ", ".join(self.missing_classes)
            )
        lines += [
            f"classes {', '.join(repr(c) for c in group)} differ only in case or punctuation: they train as "
            f"{len(group)} classes; to merge them, a class map {{{group[0]}: [{', '.join(group)}]}} (--class-map)"
            for group in self.near_identical_classes()
        ]
        return lines

    def near_identical_classes(self) -> list[list[str]]:
        """Groups of labels that are one label written differently (``Acne`` and ``acne``): the same
        :func:`normalise_label` key."""
        keys: dict[str, list[str]] = {}
        for label in self.classes:
            keys.setdefault(normalise_label(label), []).append(label)
        return [sorted(g) for g in keys.values() if len(g) > 1]

    def _left_out_of(self, source_label: str) -> str:
        n = int((self.bad["label"] == source_label).sum())
        return f"{n} file(s) left out" if n else "no file"

    def bad_report(self, limit: int = 20) -> str:
        """The files left out, for printing: the first ``limit`` names (relative to the source) with their
        reasons, then how many more and the count per reason."""
        if self.bad.empty:
            return "no file left out"
        base = base_of(self.source)
        lines = [f"{len(self.bad)} file(s) left out:"]
        lines += [
            f"  {relative(p, base)}: {r}"
            for p, r in zip(self.bad["path"][:limit], self.bad["reason"][:limit], strict=True)
        ]
        if len(self.bad) > limit:
            lines.append(f"  ... and {len(self.bad) - limit} more")
        counts = ", ".join(f"{r} {n}" for r, n in self.bad["reason"].value_counts().items())
        return "\n".join([*lines, f"  by reason: {counts}"])

    def all_files(self) -> pd.DataFrame:
        """Records and bad rows in one table (``reason`` empty for records, ``local_path`` = ``path`` and
        ``split`` empty for bad rows): what :func:`ml.quality.features.compute_features` takes so that
        validation names every file (bad rows with an :data:`UNREAD_REASONS` reason are not opened)."""
        bad = self.bad.assign(local_path=self.bad["path"], split="")
        return pd.concat([self.records.assign(reason="", message=""), bad], ignore_index=True)[
            [*RECORD_COLUMNS, "reason", "message"]
        ]

    def save(self, path: str | Path) -> Path:
        """Write the records as CSV at ``path`` and a JSON sidecar (``.json``) with bad rows and metadata
        (a derived manifest's parent version and the files it set aside too)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        sidecar = {
            "source": self.source,
            "classes": self.classes,
            "version": self.version,
            "empty_classes": self.empty_classes,
            "class_map_labels": self.class_map_labels,
            "bad": self.bad.to_dict(orient="records"),
            "summary": self.summary(),
            "parent_version": self.parent_version,
            "quarantined": None if self.quarantined is None else self.quarantined.to_dict(orient="records"),
            "notes": list(self.notes),
        }
        existed = path.exists()
        atomic_write(path, self.records.to_csv(index=False).encode())
        try:
            atomic_write(path.with_suffix(".json"), json.dumps(sidecar, indent=2).encode())
        except StorageError:  # no CSV left without its sidecar (a full disk): one is useless without the other
            if not existed:
                path.unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        """Read a manifest written by :meth:`save`; raises ValueError if the files disagree."""
        path = Path(path)
        meta = json.loads(path.with_suffix(".json").read_text())
        records = read_table(path.read_bytes(), str(path))
        missing = set(RECORD_COLUMNS) - set(records.columns)
        if missing:
            raise ValueError(f"{path}: not a manifest, missing columns {sorted(missing)}")
        records["bytes"] = records["bytes"].astype("int64")
        bad = pd.DataFrame(meta["bad"], columns=BAD_COLUMNS)
        manifest = cls(
            records[RECORD_COLUMNS],
            bad,
            list(meta["classes"]),
            meta["source"],
            list(meta.get("empty_classes", [])),
            meta.get("class_map_labels"),
            meta.get("parent_version"),
            None if meta.get("quarantined") is None else pd.DataFrame(meta["quarantined"], columns=QUARANTINE_COLUMNS),
            list(meta.get("notes", [])),
        )
        if manifest.version != meta["version"]:
            raise ValueError(f"{path}: records give version {manifest.version}, the sidecar says {meta['version']}")
        return manifest


# --- listing sources ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    """A source entry (:class:`ml.data.sources.Entry`: path, root rule) with its source label and split."""

    file: Entry
    source_label: str
    split: str

    @property
    def path(self) -> str:
        return self.file.path


def _bad(path: str, label: str, reason: str, message: str) -> dict[str, str]:
    return {"path": path, "label": label, "reason": reason, "message": message}


def _normalise_split(value: str, where: str) -> str:
    if not value.strip():
        return ""
    try:
        return SPLIT_ALIASES[value.strip().lower()]
    except KeyError:
        raise ValueError(f"{where}: unknown split '{value}' (expected one of {sorted(SPLIT_ALIASES)})") from None


def _folder_entries(source: Source) -> tuple[list[_Entry], list[dict], set[str]]:
    """Entries of an ImageFolder (flat or split layout), bad rows for unlabelled images and folders not
    entered, and the source labels of every class folder (empty ones too)."""
    tree = source.list_folder()
    root = tree.root
    if not tree.files and not tree.folders:
        raise ValueError(f"{root}: no files found (expected an ImageFolder with one folder per class)")
    tops = {e.rel.split("/")[0].lower() for e in tree.files if "/" in e.rel}
    has_splits = bool(tops) and tops <= set(SPLIT_ALIASES)
    splits, classes = sorted(tops & set(SPLIT_ALIASES)), sorted(tops - set(SPLIT_ALIASES))
    if splits and classes:  # read either way, some images would get a split's name as their label
        raise ValueError(
            f"{root}: mixed layout: split folders ({', '.join(splits)}) beside class folders "
            f"({', '.join(classes)}); put every class folder under a split folder, or none"
        )
    depth = 3 if has_splits else 2
    entries, bad = [], []
    for file in tree.files:
        parts = file.rel.split("/")
        if len(parts) >= depth:
            split = SPLIT_ALIASES[parts[0].lower()] if has_splits else ""
            entries.append(_Entry(file, parts[depth - 2], split))
        elif PurePosixPath(file.rel).suffix.lower() in IMAGE_SUFFIXES:
            bad.append(_bad(file.path, "", "no_label", f"{file.rel} is not inside a class folder"))
        elif not PurePosixPath(file.rel).suffix and (kind := _sniffed(file.path)):
            message = f"{file.rel} is a {kind} image without an extension, not inside a class folder"
            bad.append(_bad(file.path, "", "no_label", message))

    def class_of(folder: str) -> str:
        parts = folder.split("/")
        return parts[depth - 2] if len(parts) >= depth - 1 else ""

    bad += [_bad(e.path, class_of(e.rel), e.reason, e.message) for e in tree.refused]
    class_level = [
        f
        for f in [*tree.folders, *(e.rel for e in tree.refused)]
        if f.count("/") == depth - 2 and (not has_splits or f.split("/")[0].lower() in SPLIT_ALIASES)
    ]
    return entries, bad, {class_of(f) for f in class_level}


def _sniffed(path: str) -> str | None:
    """The image format a local file's first bytes announce (an S3 object is not fetched for this)."""
    if is_s3(path) or not os.path.isfile(path):
        return None
    try:
        with open(path, "rb") as f:
            return image_signature(f.read(16))
    except OSError:
        return None


def _csv_entries(source: Source) -> tuple[list[_Entry], list[dict]]:
    """Entries of a ``path,label[,split]`` CSV; empty labels and repeated paths become bad rows."""
    csv_uri, table = source.uri, source.table()
    missing = {"path", "label"} - set(table.columns)
    if missing:
        raise ValueError(f"{csv_uri}: missing column(s) {sorted(missing)}; expected path,label[,split]")
    splits = table["split"] if "split" in table.columns else [""] * len(table)
    entries, bad, seen = [], [], set()
    for row, (raw, label, split) in enumerate(zip(table["path"], table["label"], splits, strict=True), start=2):
        file = source.csv_entry(raw)
        where = f"{csv_uri} line {row}"
        if file.path in seen:
            bad.append(_bad(file.path, label, "duplicate_entry", f"{where}: {raw} is listed more than once"))
        elif not label.strip():
            bad.append(_bad(file.path, "", "no_label", f"{where}: empty label for {raw}"))
        else:
            entries.append(_Entry(file, label.strip(), _normalise_split(split, where)))
        seen.add(file.path)
    return entries, bad


# --- inspecting files --------------------------------------------------------------------------


def _row(result: FileResult, entry: _Entry, label: str) -> tuple[str, dict]:
    """``("record", row)`` for a usable file, ``("bad", row)`` otherwise."""
    if not result.ok:
        return "bad", _bad(entry.path, label, result.reason, result.message)
    return "record", {
        "path": entry.path,
        "local_path": result.local_path,
        "label": label,
        "source_label": entry.source_label,
        "split": entry.split,
        "sha256": result.sha256,
        "bytes": result.bytes,
    }


def _label_entries(entries: list[_Entry], class_map: ClassMap | None) -> tuple[list[tuple[_Entry, str]], list[dict]]:
    """Pair entries with model labels; entries the class map does not cover become bad rows."""
    if class_map is None:
        return [(e, e.source_label) for e in entries], []
    labelled, bad = [], []
    for e in entries:
        label = class_map.lookup(e.source_label)
        if label is None:
            message = f"source label '{e.source_label}' is not in the class map (labels: {', '.join(class_map.labels)})"
            bad.append(_bad(e.path, e.source_label, "unmapped_label", message))
        else:
            labelled.append((e, label))
    return labelled, bad


def check_source(source: str | os.PathLike, storage: Storage | None = None, allow_outside_root: bool = False) -> None:
    """Raise the error :func:`build_manifest` would raise for an unusable source (missing, neither
    a folder nor a CSV, no files, an unreadable CSV) after listing it only: no file is hashed or
    decoded, so a caller can refuse a bad source in a moment."""
    _list_source(Source(source, storage, allow_outside_root))


def _list_source(source: Source) -> tuple[list[_Entry], list[dict], set[str]]:
    """Entries, early bad rows and the source labels seen (class folders, CSV labels) of a local or S3
    ImageFolder or CSV; raises for an unusable source."""
    src = source.uri
    if not is_s3(src) and not Path(src).exists():
        raise FileNotFoundError(f"dataset source {src} does not exist")
    if not is_s3(src) and not source.is_csv and not Path(src).is_dir():
        raise ValueError(f"dataset source {src} is neither an ImageFolder directory nor a .csv manifest")
    if source.is_csv:
        entries, bad = _csv_entries(source)
        if not entries and not bad:
            raise ValueError(f"{src}: the CSV lists no files (a header and no rows): the dataset is empty")
        return entries, bad, {e.source_label for e in entries}
    return _folder_entries(source)


def _empty_classes(seen: set[str], records: pd.DataFrame, class_map: ClassMap | None) -> list[str]:
    """Source labels seen (those the class map covers, or all) that no record came from."""
    covered = {label for label in seen if class_map is None or class_map.lookup(label) is not None}
    return sorted(covered - set(records["source_label"]))


def build_manifest(
    source: str | Path,
    class_map: ClassMap | str | Path | Mapping[str, Iterable[str]] | None = None,
    storage: Storage | None = None,
    check: bool = True,
    progress: bool = False,
    workers: int = 8,
    allow_outside_root: bool = False,
    on_image: OnImage | None = None,
) -> Manifest:
    """Build the manifest of an ImageFolder or CSV ``source`` (local or ``s3://``).

    With ``check`` every image is fully decoded, once (:meth:`ml.data.sources.Source.read`); files are
    hashed and checked in a thread pool of ``workers``. Problems with single files go to ``Manifest.bad``;
    an unusable source (missing, not a folder or CSV, CSV without ``path``/``label``) raises. Files
    outside the dataset root are refused (``outside_root``) unless ``allow_outside_root``. Empty and
    missing classes are logged as warnings (``Manifest.warnings()``), as are the files left out.
    ``on_image(path, rgb)`` (with ``check``) gets the pixels of each usable image from that same decode.
    """
    src = Source(source, storage, allow_outside_root)
    cmap = None if class_map is None else load_class_map(class_map)
    with _said("ml.data") as notes:  # what listing and reading warn of (ml.data.sources, ml.data.images), kept
        entries, listing_bad, seen = _list_source(src)
        labelled, unmapped = _label_entries(entries, cmap)
        results = src.read_all([e.file for e, _ in labelled], check, workers, on_image, progress, desc="manifest")
    rows = [_row(result, entry, label) for result, (entry, label) in zip(results, labelled, strict=True)]
    records = pd.DataFrame([r for kind, r in rows if kind == "record"], columns=RECORD_COLUMNS)
    records = records.astype({"bytes": "int64"}).sort_values("path", ignore_index=True)
    bad = pd.DataFrame(listing_bad + unmapped + [r for kind, r in rows if kind == "bad"], columns=BAD_COLUMNS)
    manifest = Manifest(
        records,
        bad.sort_values("path", ignore_index=True),
        sorted(records["label"].unique()),
        src.uri,
        _empty_classes(seen, records, cmap),
        None if cmap is None else cmap.labels,
    )
    manifest.notes = [*notes, *(f"{src.uri}: {line}" for line in manifest.warnings())]
    for line in manifest.warnings() + ([manifest.bad_report()] if len(manifest.bad) else []):
        logger.warning("%s: %s", src.uri, line)
    return manifest


class _Said(logging.Handler):
    """Collects the messages of warning records (from any thread)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextmanager
def _said(*names: str) -> Iterator[list[str]]:
    """The warning lines the loggers ``names`` emit while inside (they are still logged as before)."""
    handler = _Said()
    loggers = [logging.getLogger(n) for n in names]
    for log in loggers:
        log.addHandler(handler)
    try:
        yield handler.lines
    finally:
        for log in loggers:
            log.removeHandler(handler)
