"""Dataset manifests: every input file with its label, split, SHA-256 and size, and a content version.

Sources
-------
* an ImageFolder directory, ``<root>/<class>/...`` or, when every top-level folder is a split name
  (train/val/valid/validation/test), ``<root>/<split>/<class>/...``;
* a CSV file with columns ``path,label[,split]``; relative paths are resolved against the CSV's folder,
  absolute paths and ``s3://`` URIs are used as they are.

Both may be local or under ``s3://bucket/prefix``. S3 objects are materialised in a content-addressed
folder (``<settings.data_root>/s3cache/<sha256[:2]>/<sha256><suffix>``); ``path`` keeps the URI and
``local_path`` names the materialised file.

Folder rules: files whose name or folder starts with ``.`` are ignored, as are non-image files above
the class folders (README, NOTICE, CSV manifests); every other file is either a record or a row of
``Manifest.bad`` with its reason (image reasons of :mod:`ml.data.images`, plus ``no_label``,
``unmapped_label``, ``missing_file`` and ``duplicate_entry``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pandas as pd
import yaml
from tqdm import tqdm

from ml.data.images import check_image
from ml.storage import Storage, is_s3, join, sha256_file

RECORD_COLUMNS = ["path", "local_path", "label", "source_label", "split", "sha256", "bytes"]
BAD_COLUMNS = ["path", "label", "reason", "message"]
SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp"})
DATA_DIR = Path(__file__).resolve().parent / "class_maps"


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
    """Records (usable images), bad inputs (with reasons), classes and the source they came from."""

    records: pd.DataFrame
    bad: pd.DataFrame
    classes: list[str]
    source: str

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
        """Counts per class and split, bad counts per reason, and the version."""
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
        }

    def save(self, path: str | Path) -> Path:
        """Write the records as CSV at ``path`` and a JSON sidecar (``.json``) with bad rows and metadata."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        sidecar = {"source": self.source, "classes": self.classes, "version": self.version,
                   "bad": self.bad.to_dict(orient="records"), "summary": self.summary()}
        _atomic_write(path, self.records.to_csv(index=False).encode())
        _atomic_write(path.with_suffix(".json"), json.dumps(sidecar, indent=2).encode())
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
        manifest = cls(records[RECORD_COLUMNS], bad, list(meta["classes"]), meta["source"])
        if manifest.version != meta["version"]:
            raise ValueError(f"{path}: records give version {manifest.version}, the sidecar says {meta['version']}")
        return manifest


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


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


def _folder_entries(root: str, storage: Storage) -> tuple[list[_Entry], list[dict]]:
    """Entries of an ImageFolder (flat or split layout) and bad rows for unlabelled images."""
    rels = [_relative(p, root) for p in storage.list(root + "/" if is_s3(root) else root)]
    rels = [r for r in rels if not any(part.startswith(".") for part in r.split("/"))]
    if not rels:
        raise ValueError(f"{root}: no files found (expected an ImageFolder with one folder per class)")
    tops = {r.split("/")[0].lower() for r in rels if "/" in r}
    has_splits = bool(tops) and tops <= set(SPLIT_ALIASES)
    depth = 3 if has_splits else 2
    entries, bad = [], []
    for rel in rels:
        parts = rel.split("/")
        if len(parts) >= depth:
            split = SPLIT_ALIASES[parts[0].lower()] if has_splits else ""
            entries.append(_Entry(join(root, rel), parts[depth - 2], split))
        elif PurePosixPath(rel).suffix.lower() in IMAGE_SUFFIXES:
            bad.append(_bad(join(root, rel), "", "no_label", f"{rel} is not inside a class folder"))
    return entries, bad


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
    """Local file for a path or an ``s3://`` URI (S3 objects land in a content-addressed folder)."""

    def __init__(self, storage: Storage, cache_dir: Path) -> None:
        self.storage = storage
        self.cache_dir = cache_dir

    def __call__(self, path: str) -> Path:
        if not is_s3(path):
            local = Path(path)
            if not local.is_file():
                raise FileNotFoundError(f"no such file: {path}")
            return local
        data = self.storage.get_bytes(path)
        digest = hashlib.sha256(data).hexdigest()
        local = self.cache_dir / digest[:2] / f"{digest}{PurePosixPath(path).suffix.lower()}"
        if not local.is_file():
            local.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(local, data)
        return local


def _inspect(entry: _Entry, label: str, fetch: Callable[[str], Path], check: bool) -> tuple[str, dict]:
    """``("record", row)`` for a usable file, ``("bad", row)`` otherwise."""
    try:
        local = fetch(entry.path)
    except FileNotFoundError as exc:
        return "bad", _bad(entry.path, label, "missing_file", str(exc))
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


def _list_source(src: str, storage: Storage) -> tuple[list[_Entry], list[dict]]:
    """Entries and early bad rows of a local or S3 ImageFolder or CSV; raises for an unusable source."""
    is_csv = src.lower().endswith(".csv")
    if not is_s3(src) and not Path(src).exists():
        raise FileNotFoundError(f"dataset source {src} does not exist")
    if not is_s3(src) and not is_csv and not Path(src).is_dir():
        raise ValueError(f"dataset source {src} is neither an ImageFolder directory nor a .csv manifest")
    return _csv_entries(src, storage) if is_csv else _folder_entries(src.rstrip("/"), storage)


def _inspect_all(labelled: list[tuple[_Entry, str]], fetch: _Fetcher, check: bool, workers: int,
                 progress: bool) -> list[tuple[str, dict]]:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        jobs = pool.map(lambda pair: _inspect(pair[0], pair[1], fetch, check), labelled)
        return list(tqdm(jobs, total=len(labelled), desc="manifest", disable=not progress))


def build_manifest(
    source: str | Path,
    class_map: ClassMap | str | Path | Mapping[str, Iterable[str]] | None = None,
    storage: Storage | None = None,
    check: bool = True,
    progress: bool = False,
    workers: int = 8,
) -> Manifest:
    """Build the manifest of an ImageFolder or CSV ``source`` (local or ``s3://``).

    With ``check`` every image is fully decoded (:func:`ml.data.images.check_image`); files are hashed
    and checked in a thread pool of ``workers``. Problems with single files go to ``Manifest.bad``;
    an unusable source (missing, not a folder or CSV, CSV without ``path``/``label``) raises.
    """
    storage = storage or Storage()
    src = str(source) if is_s3(source) else os.path.abspath(source)
    entries, listing_bad = _list_source(src, storage)
    labelled, unmapped = _label_entries(entries, None if class_map is None else load_class_map(class_map))
    fetch = _Fetcher(storage, Path(storage.settings.data_root) / "s3cache")
    results = _inspect_all(labelled, fetch, check, workers, progress)
    records = pd.DataFrame([r for kind, r in results if kind == "record"], columns=RECORD_COLUMNS)
    records = records.astype({"bytes": "int64"}).sort_values("path", ignore_index=True)
    bad = pd.DataFrame(listing_bad + unmapped + [r for kind, r in results if kind == "bad"], columns=BAD_COLUMNS)
    return Manifest(records, bad.sort_values("path", ignore_index=True), sorted(records["label"].unique()), src)
