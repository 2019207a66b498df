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
``local_path`` names the materialised file.

Folder rules: files whose name or folder starts with ``.`` are ignored, as are non-image files above
the class folders (README, NOTICE, CSV manifests); every other file is either a record or a row of
``Manifest.bad`` with its reason (image and file reasons of :mod:`ml.data.images`, among them
``broken_symlink`` and ``not_a_file``, plus ``no_label``, ``unmapped_label``, ``duplicate_entry``,
``outside_root`` and ``symlink_loop``). Class folders are followed through symbolic links (a link
back into one of its own parent folders is ``symlink_loop``). A class with no usable image (an empty
folder, or every file left out) is named in ``Manifest.empty_classes``; a class the class map promises
but no usable image carries is named in ``Manifest.missing_classes``; both are logged as warnings.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import posixpath
import re
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd
import yaml
from tqdm import tqdm

from ml.data.images import BadImageError, check_image, path_problem
from ml.storage import Storage, atomic_write, is_s3, join, sha256_file

RECORD_COLUMNS = ["path", "local_path", "label", "source_label", "split", "sha256", "bytes"]
BAD_COLUMNS = ["path", "label", "reason", "message"]
SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp"})
DATA_DIR = Path(__file__).resolve().parent / "class_maps"
UNREAD_REASONS = frozenset({"outside_root", "symlink_loop", "broken_symlink", "not_a_file", "missing_file"})
"""Bad-row reasons of files that are never opened (by the manifest nor by anything reading its bad rows)."""

logger = logging.getLogger(__name__)


# --- class maps --------------------------------------------------------------------------------


def normalise_label(label: str) -> str:
    """Matching key of a source label: lower case, letters and digits only ("Bowen's_Disease" -> "bowensdisease")."""
    return re.sub(r"[^0-9a-z]", "", label.lower())


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
    """

    records: pd.DataFrame
    bad: pd.DataFrame
    classes: list[str]
    source: str
    empty_classes: list[str] = field(default_factory=list)
    class_map_labels: list[str] | None = None

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
        base = _base_of(self.source)
        rows = sorted(
            [_relative(p, base), s, lab, sp]
            for p, s, lab, sp in zip(self.records["path"], self.records["sha256"], self.records["label"],
                                     self.records["split"], strict=True)
        )
        return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]

    def summary(self) -> dict:
        """Counts per class and split, bad counts per reason, empty and missing classes, and the version."""
        counts = self.records.groupby(["label", "split"]).size()
        per_class: dict[str, dict[str, int]] = {c: {} for c in self.classes}
        for (label, split), n in counts.items():
            per_class[label][split or "unassigned"] = int(n)
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
        }

    def warnings(self) -> list[str]:
        """One line per class-level problem: empty classes, classes the class map promises but lacks."""
        lines = [f"class '{c}' has no usable image ({self._left_out_of(c)})" for c in self.empty_classes]
        if self.missing_classes:
            lines.append(f"{len(self.missing_classes)} class(es) of the class map have no usable image: "
                         + ", ".join(self.missing_classes))
        return lines

    def _left_out_of(self, source_label: str) -> str:
        n = int((self.bad["label"] == source_label).sum())
        return f"{n} file(s) left out" if n else "no file"

    def bad_report(self, limit: int = 20) -> str:
        """The files left out, for printing: the first ``limit`` names (relative to the source) with their
        reasons, then how many more and the count per reason."""
        if self.bad.empty:
            return "no file left out"
        base = _base_of(self.source)
        lines = [f"{len(self.bad)} file(s) left out:"]
        lines += [f"  {_relative(p, base)}: {r}" for p, r in zip(self.bad["path"][:limit], self.bad["reason"][:limit],
                                                                  strict=True)]
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
            [*RECORD_COLUMNS, "reason", "message"]]

    def save(self, path: str | Path) -> Path:
        """Write the records as CSV at ``path`` and a JSON sidecar (``.json``) with bad rows and metadata."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        sidecar = {"source": self.source, "classes": self.classes, "version": self.version,
                   "empty_classes": self.empty_classes, "class_map_labels": self.class_map_labels,
                   "bad": self.bad.to_dict(orient="records"), "summary": self.summary()}
        atomic_write(path, self.records.to_csv(index=False).encode())
        atomic_write(path.with_suffix(".json"), json.dumps(sidecar, indent=2).encode())
        return path

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        """Read a manifest written by :meth:`save`; raises ValueError if the files disagree."""
        path = Path(path)
        meta = json.loads(path.with_suffix(".json").read_text())
        records = _read_csv(path.read_bytes(), str(path))
        missing = set(RECORD_COLUMNS) - set(records.columns)
        if missing:
            raise ValueError(f"{path}: not a manifest, missing columns {sorted(missing)}")
        records["bytes"] = records["bytes"].astype("int64")
        bad = pd.DataFrame(meta["bad"], columns=BAD_COLUMNS)
        manifest = cls(records[RECORD_COLUMNS], bad, list(meta["classes"]), meta["source"],
                       list(meta.get("empty_classes", [])), meta.get("class_map_labels"))
        if manifest.version != meta["version"]:
            raise ValueError(f"{path}: records give version {manifest.version}, the sidecar says {meta['version']}")
        return manifest


def _read_csv(data: bytes, name: str) -> pd.DataFrame:
    try:
        return pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"{name}: cannot parse CSV ({exc})") from exc


def _base_of(source: str) -> str:
    """The folder that relative paths of ``source`` refer to."""
    return posixpath.dirname(source) if source.lower().endswith(".csv") else source.rstrip("/")


def _relative(path: str, base: str) -> str:
    return path[len(base) + 1:] if path.startswith(base + "/") else path


# --- listing sources ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    path: str
    source_label: str
    split: str


def _bad(path: str, label: str, reason: str, message: str) -> dict[str, str]:
    return {"path": path, "label": label, "reason": reason, "message": message}


def _normalise_split(value: str, where: str) -> str:
    if not value.strip():
        return ""
    try:
        return SPLIT_ALIASES[value.strip().lower()]
    except KeyError:
        raise ValueError(f"{where}: unknown split '{value}' (expected one of {sorted(SPLIT_ALIASES)})") from None


@dataclass(frozen=True)
class _Tree:
    """What a folder listing found, relative to its root: files, folders, and folders not entered."""

    files: list[str]
    folders: list[str]
    refused: list[tuple[str, str, str]]  # (relative folder, reason, message)


def _list_tree(root: str, storage: Storage, allow_outside_root: bool) -> _Tree:
    """Every non-hidden file and folder under ``root``: local through :func:`_walk_local`, S3 by listing
    (keys ending in ``/`` are the folder markers that consoles create for empty folders)."""
    if not is_s3(root):
        return _walk_local(root, allow_outside_root)
    rels = [_relative(p, root) for p in storage.list(root + "/")]
    rels = [r for r in rels if not any(part.startswith(".") for part in r.rstrip("/").split("/"))]
    folders = {r.rstrip("/") for r in rels if r.endswith("/")}
    files = [r for r in rels if not r.endswith("/")]
    folders |= {"/".join(f.split("/")[:i]) for f in files for i in range(1, f.count("/") + 1)}
    return _Tree(files, sorted(folders - {""}), [])


def _walk_local(root: str, allow_outside_root: bool) -> _Tree:
    """Walk ``root`` following folder links, except links leading out of it (unless allowed) and links
    back into a folder on their own path (a loop): those are not entered and come back as refused."""
    root_real = os.path.realpath(root)
    files, folders, refused = [], [], []
    chains = {root: (root_real,)}  # real paths of each folder's ancestors, to detect loops
    for here, dirnames, filenames in os.walk(root, followlinks=True):
        chain, rel_here = chains.pop(here), os.path.relpath(here, root)
        entered = []
        for name in sorted(d for d in dirnames if not d.startswith(".")):
            rel, real = os.path.normpath(os.path.join(rel_here, name)), os.path.realpath(os.path.join(here, name))
            if real in chain:
                refused.append((rel, "symlink_loop", f"{name} links back to {real}, a folder above it; not entered"))
            elif not allow_outside_root and not _is_within(real, root_real):
                refused.append((rel, "outside_root", f"{name} links to {real}, outside the dataset root {root_real}; "
                                                     "not entered (allow_outside_root=True reads it)"))
            else:
                chains[os.path.join(here, name)] = (*chain, real)
                entered.append(name)
                folders.append(rel)
        dirnames[:] = entered
        files += [os.path.normpath(os.path.join(rel_here, f)) for f in sorted(filenames) if not f.startswith(".")]
    return _Tree(sorted(files), sorted(folders), refused)


def _is_within(real: str, root_real: str) -> bool:
    return os.path.commonpath([real, root_real]) == root_real


def _outside_root(path: str, root: str) -> bool:
    """Whether ``path`` lies outside ``root``: local paths after resolving links, S3 keys after
    normalising ``..``; a local path under an S3 root, or the reverse, is outside."""
    if is_s3(path) != is_s3(root):
        return True
    if is_s3(path):
        return not posixpath.normpath(path[5:]).startswith(posixpath.normpath(root[5:]) + "/")
    return not _is_within(os.path.realpath(path), os.path.realpath(root))


def _folder_entries(root: str, storage: Storage, allow_outside_root: bool = False
                    ) -> tuple[list[_Entry], list[dict], set[str]]:
    """Entries of an ImageFolder (flat or split layout), bad rows for unlabelled images and folders not
    entered, and the source labels of every class folder (empty ones too)."""
    tree = _list_tree(root, storage, allow_outside_root)
    if not tree.files and not tree.folders:
        raise ValueError(f"{root}: no files found (expected an ImageFolder with one folder per class)")
    tops = {r.split("/")[0].lower() for r in tree.files if "/" in r}
    has_splits = bool(tops) and tops <= set(SPLIT_ALIASES)
    depth = 3 if has_splits else 2
    entries, bad = [], []
    for rel in tree.files:
        parts = rel.split("/")
        if len(parts) >= depth:
            split = SPLIT_ALIASES[parts[0].lower()] if has_splits else ""
            entries.append(_Entry(join(root, rel), parts[depth - 2], split))
        elif PurePosixPath(rel).suffix.lower() in IMAGE_SUFFIXES:
            bad.append(_bad(join(root, rel), "", "no_label", f"{rel} is not inside a class folder"))
    def class_of(folder: str) -> str:
        parts = folder.split("/")
        return parts[depth - 2] if len(parts) >= depth - 1 else ""

    bad += [_bad(join(root, rel), class_of(rel), reason, message) for rel, reason, message in tree.refused]
    class_level = [f for f in [*tree.folders, *(r[0] for r in tree.refused)] if f.count("/") == depth - 2
                   and (not has_splits or f.split("/")[0].lower() in SPLIT_ALIASES)]
    return entries, bad, {class_of(f) for f in class_level}


def _csv_entries(csv_uri: str, storage: Storage) -> tuple[list[_Entry], list[dict]]:
    """Entries of a ``path,label[,split]`` CSV; empty labels and repeated paths become bad rows."""
    table = _read_csv(storage.get_bytes(csv_uri), csv_uri)
    missing = {"path", "label"} - set(table.columns)
    if missing:
        raise ValueError(f"{csv_uri}: missing column(s) {sorted(missing)}; expected path,label[,split]")
    base = _base_of(csv_uri)
    splits = table["split"] if "split" in table.columns else [""] * len(table)
    entries, bad, seen = [], [], set()
    for row, (raw, label, split) in enumerate(zip(table["path"], table["label"], splits, strict=True), start=2):
        path = _resolve(raw.strip(), base)
        where = f"{csv_uri} line {row}"
        if path in seen:
            bad.append(_bad(path, label, "duplicate_entry", f"{where}: {raw} is listed more than once"))
        elif not label.strip():
            bad.append(_bad(path, "", "no_label", f"{where}: empty label for {raw}"))
        else:
            entries.append(_Entry(path, label.strip(), _normalise_split(split, where)))
        seen.add(path)
    return entries, bad


def _resolve(raw: str, base: str) -> str:
    """An absolute path or URI for a CSV entry."""
    if is_s3(raw):
        return raw
    if is_s3(base) and not os.path.isabs(raw):
        return "s3://" + posixpath.normpath(join(base, raw)[5:])
    return os.path.abspath(os.path.join(base, raw))


# --- inspecting files --------------------------------------------------------------------------


class _Fetcher:
    """Local file for a path or an ``s3://`` URI (S3 objects land in a content-addressed folder).

    Raises :class:`BadImageError` for what cannot be read: a path outside ``root`` (unless allowed),
    a missing file, a broken link, something that is not a regular file."""

    def __init__(self, storage: Storage, cache_dir: Path, root: str, allow_outside_root: bool = False) -> None:
        self.storage = storage
        self.cache_dir = cache_dir
        self.root = root
        self.allow_outside_root = allow_outside_root

    def __call__(self, path: str) -> Path:
        if not self.allow_outside_root and _outside_root(path, self.root):
            raise BadImageError("outside_root", f"{path} is outside the dataset root {self.root}; not read "
                                                "(allow_outside_root=True reads it)")
        if not is_s3(path):
            problem = path_problem(path)
            if problem is not None:
                raise BadImageError(*problem)
            return Path(path)
        try:
            data = self.storage.get_bytes(path)
        except FileNotFoundError as exc:
            raise BadImageError("missing_file", str(exc)) from exc
        digest = hashlib.sha256(data).hexdigest()
        local = self.cache_dir / digest[:2] / f"{digest}{PurePosixPath(path).suffix.lower()}"
        if not local.is_file():
            local.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(local, data)
        return local


def _inspect(entry: _Entry, label: str, fetch: Callable[[str], Path], check: bool) -> tuple[str, dict]:
    """``("record", row)`` for a usable file, ``("bad", row)`` otherwise."""
    try:
        local = fetch(entry.path)
    except BadImageError as exc:
        return "bad", _bad(entry.path, label, exc.reason, exc.message)
    if check:
        result = check_image(local)
        if not result.ok:
            return "bad", _bad(entry.path, label, result.reason, result.message)
    row = {"path": entry.path, "local_path": str(local), "label": label, "source_label": entry.source_label,
           "split": entry.split, "sha256": sha256_file(local), "bytes": local.stat().st_size}
    return "record", row


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
    src = str(source) if is_s3(source) else os.path.abspath(source)
    _list_source(src, storage or Storage(), allow_outside_root)


def _list_source(src: str, storage: Storage, allow_outside_root: bool = False
                 ) -> tuple[list[_Entry], list[dict], set[str]]:
    """Entries, early bad rows and the source labels seen (class folders, CSV labels) of a local or S3
    ImageFolder or CSV; raises for an unusable source."""
    is_csv = src.lower().endswith(".csv")
    if not is_s3(src) and not Path(src).exists():
        raise FileNotFoundError(f"dataset source {src} does not exist")
    if not is_s3(src) and not is_csv and not Path(src).is_dir():
        raise ValueError(f"dataset source {src} is neither an ImageFolder directory nor a .csv manifest")
    if is_csv:
        entries, bad = _csv_entries(src, storage)
        return entries, bad, {e.source_label for e in entries}
    return _folder_entries(src.rstrip("/"), storage, allow_outside_root)


def _inspect_all(labelled: list[tuple[_Entry, str]], fetch: _Fetcher, check: bool, workers: int,
                 progress: bool) -> list[tuple[str, dict]]:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        jobs = pool.map(lambda pair: _inspect(pair[0], pair[1], fetch, check), labelled)
        return list(tqdm(jobs, total=len(labelled), desc="manifest", disable=not progress))


def _root_of(src: str, storage: Storage) -> str:
    """The dataset root of ``src``: its folder (the CSV's folder), or for a manifest saved by
    :meth:`Manifest.save` (a CSV with a JSON sidecar naming its source) the root of that source."""
    sidecar = src[:-4] + ".json"
    if not src.lower().endswith(".csv") or not storage.exists(sidecar):
        return _base_of(src)
    try:
        meta = json.loads(storage.get_bytes(sidecar))
    except (ValueError, OSError):
        return _base_of(src)
    saved = isinstance(meta, dict) and isinstance(meta.get("source"), str) and "version" in meta
    return _base_of(meta["source"]) if saved else _base_of(src)


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
) -> Manifest:
    """Build the manifest of an ImageFolder or CSV ``source`` (local or ``s3://``).

    With ``check`` every image is fully decoded (:func:`ml.data.images.check_image`); files are hashed
    and checked in a thread pool of ``workers``. Problems with single files go to ``Manifest.bad``;
    an unusable source (missing, not a folder or CSV, CSV without ``path``/``label``) raises. Files
    outside the dataset root are refused (``outside_root``) unless ``allow_outside_root``. Empty and
    missing classes are logged as warnings (``Manifest.warnings()``), as are the files left out.
    """
    storage = storage or Storage()
    src = str(source) if is_s3(source) else os.path.abspath(source)
    cmap = None if class_map is None else load_class_map(class_map)
    entries, listing_bad, seen = _list_source(src, storage, allow_outside_root)
    labelled, unmapped = _label_entries(entries, cmap)
    fetch = _Fetcher(storage, Path(storage.settings.data_root) / "s3cache", _root_of(src, storage), allow_outside_root)
    results = _inspect_all(labelled, fetch, check, workers, progress)
    records = pd.DataFrame([r for kind, r in results if kind == "record"], columns=RECORD_COLUMNS)
    records = records.astype({"bytes": "int64"}).sort_values("path", ignore_index=True)
    bad = pd.DataFrame(listing_bad + unmapped + [r for kind, r in results if kind == "bad"], columns=BAD_COLUMNS)
    manifest = Manifest(records, bad.sort_values("path", ignore_index=True), sorted(records["label"].unique()), src,
                        _empty_classes(seen, records, cmap), None if cmap is None else cmap.labels)
    for line in manifest.warnings() + ([manifest.bad_report()] if len(manifest.bad) else []):
        logger.warning("%s: %s", src, line)
    return manifest
