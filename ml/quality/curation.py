"""Dataset curation (thesis ch. 4): pen-mark removal, gamma, field-of-view crop, balance.

Every function returns new arrays/frames and :func:`curate_dataset` writes a new ImageFolder;
source files are never modified. Setting files aside (label conflicts, broken files) is the
validation's quarantine, :mod:`ml.quality.quarantine`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage
from sklearn.cluster import KMeans

from ml.data.images import BadImageError, load_rgb
from ml.data.versions import build_version
from ml.quality.features import DEFAULT_CONFOUNDER_THRESHOLD, confounder_mask, exposure_class

STEPS = ("remove_confounders", "gamma", "fov_crop")
QUANT_STEP = 16
"""k-means runs on RGB quantised to 16 levels per channel (the thesis' "quantised RGB")."""
MIN_CLEAN_SHARE = 0.25
"""A patch with fewer unmasked pixels borrows them from a window one patch wider on each side."""
MIN_LESION_DISTANCE = 40.0
"""Smallest RGB distance from the border skin colour that counts as lesion in :func:`fov_crop`."""
MIN_LESION_SHARE = 0.005
""":func:`fov_crop` leaves an image alone when the lesion it finds covers less than this share."""
_DEFAULTS = {"patch": 32, "k": 3, "dark_lesion_share": 0.25, "gamma": 1.3, "fov_target_share": 0.5}


# --------------------------------------------------------------------------- image steps
def _dominant_colour(pixels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Centre of the largest k-means cluster of quantised RGB ``pixels`` (N x 3)."""
    quantised = (pixels // QUANT_STEP) * QUANT_STEP + QUANT_STEP // 2
    distinct = np.unique(quantised, axis=0)
    if len(distinct) <= 1:
        return distinct[0].astype(np.float64)
    km = KMeans(n_clusters=min(k, len(distinct)), n_init=2, random_state=seed).fit(quantised.astype(np.float64))
    return km.cluster_centers_[np.bincount(km.labels_).argmax()]


def _clean_pixels(img: np.ndarray, mask: np.ndarray, y: int, x: int, patch: int) -> np.ndarray:
    """Unmasked pixels of the patch at (y, x), or of a window one patch wider if too few."""
    for grow in (0, patch):
        ys = slice(max(0, y - grow), y + patch + grow)
        xs = slice(max(0, x - grow), x + patch + grow)
        keep = ~mask[ys, xs]
        if keep.mean() >= MIN_CLEAN_SHARE:
            break
    return img[ys, xs][keep]


def _central(mask: np.ndarray) -> np.ndarray:
    """The middle third (in both directions) of a mask."""
    h, w = mask.shape
    return mask[h // 3 : h - h // 3, w // 3 : w - w // 3]


def remove_confounders(
    img: np.ndarray,
    patch: int = 32,
    k: int = 3,
    ink_mask_fn: Callable[[np.ndarray], np.ndarray] = confounder_mask,
    dark_lesion_share: float = 0.25,
    seed: int = 0,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Paint over pen marks (thesis ch. 4) in a uint8 HxWx3 image; return a new image and info.

    The image is cut into ``patch`` x ``patch`` tiles; in each tile holding marked pixels
    (``ink_mask_fn``, dilated by one pixel to catch JPEG halos), k-means with ``k`` clusters on the
    quantised RGB of the unmarked pixels finds the dominant colours, and the marked pixels take the
    largest cluster's colour. When the mask covers more than ``dark_lesion_share`` of the central
    region, the "ink" is a dark lesion that would be erased: the image is returned unchanged with
    ``info['skipped'] = 'dark_lesion'``. info: masked_share, patches (tiles edited), skipped.
    """
    raw = ink_mask_fn(img)
    info: dict[str, Any] = {"masked_share": float(raw.mean()), "patches": 0, "skipped": None}
    if float(_central(raw).mean()) > dark_lesion_share:
        return img.copy(), info | {"skipped": "dark_lesion"}
    mask = ndimage.binary_dilation(raw) if raw.any() else raw
    out = img.copy()
    for y in range(0, img.shape[0], patch):
        for x in range(0, img.shape[1], patch):
            tile = mask[y : y + patch, x : x + patch]
            if not tile.any():
                continue
            colour = _dominant_colour(_clean_pixels(img, mask, y, x, patch), k, seed)
            out[y : y + patch, x : x + patch][tile] = np.clip(np.rint(colour), 0, 255).astype(np.uint8)
            info["patches"] += 1
    return out, info


def gamma_correct(img: np.ndarray, gamma: float = 1.3) -> np.ndarray:
    """Brighten an under-exposed uint8 image: ``out = 255 * (in / 255) ** (1 / gamma)`` (gamma > 1 brightens)."""
    lut = np.clip(np.rint(255.0 * (np.arange(256) / 255.0) ** (1.0 / gamma)), 0, 255).astype(np.uint8)
    return lut[img]


def lesion_mask(img: np.ndarray) -> np.ndarray:
    """Heuristic lesion region: the largest connected area far in RGB from the border skin colour.

    The skin colour is the median of a border ring (1/16 of the short side); a pixel is lesion when
    its distance from it exceeds ``max(MIN_LESION_DISTANCE, 95th percentile of the ring's distances + 10)``.
    """
    h, w = img.shape[:2]
    ring = np.ones((h, w), dtype=bool)
    b = max(2, min(h, w) // 16)
    ring[b:-b, b:-b] = False
    x = img.astype(np.float64)
    dist = np.linalg.norm(x - np.median(x[ring], axis=0), axis=2)
    far = ndimage.binary_opening(dist > max(MIN_LESION_DISTANCE, np.percentile(dist[ring], 95) + 10))
    labels, n = ndimage.label(far)
    if n == 0:
        return far
    return labels == (np.bincount(labels.ravel())[1:].argmax() + 1)


def fov_crop(img: np.ndarray, target_share: float = 0.5) -> np.ndarray:
    """Square crop around the lesion so that it covers about ``target_share`` of the frame (thesis FOV).

    The lesion is found by :func:`lesion_mask`; the crop side is ``sqrt(area / target_share)``, at
    least the lesion's bounding box, at most the short side, centred on the lesion and shifted to fit.
    Returns an unchanged copy when no lesion is found or it already fills the target share.
    """
    mask = lesion_mask(img)
    h, w = mask.shape
    area = int(mask.sum())
    if area < MIN_LESION_SHARE * h * w:
        return img.copy()
    ys, xs = np.nonzero(mask)
    bbox = max(ys.max() - ys.min(), xs.max() - xs.min()) + 1
    side = int(min(max(np.sqrt(area / target_share), bbox), h, w))
    if side >= min(h, w):
        return img.copy()
    top = int(np.clip(round(ys.mean() - side / 2), 0, h - side))
    left = int(np.clip(round(xs.mean() - side / 2), 0, w - side))
    return img[top : top + side, left : left + side].copy()


# --------------------------------------------------------------------------- dataset
def _apply_steps(img: np.ndarray, steps: list[str], cfg: dict[str, Any], threshold: float) -> tuple[np.ndarray, dict]:
    """Apply the selected steps where they are indicated; return the image and what was done."""
    done: dict[str, Any] = {}
    for step in steps:
        if step == "remove_confounders" and float(confounder_mask(img).mean()) > threshold:
            img, info = remove_confounders(img, cfg["patch"], cfg["k"], dark_lesion_share=cfg["dark_lesion_share"])
            done[step] = info
        elif step == "gamma" and exposure_class(img) == "under":
            img, done[step] = gamma_correct(img, cfg["gamma"]), {"gamma": cfg["gamma"]}
        elif step == "fov_crop":
            cropped = fov_crop(img, cfg["fov_target_share"])
            if cropped.shape != img.shape:
                done[step] = {"from": list(img.shape[:2]), "to": list(cropped.shape[:2])}
            img = cropped
    return img, done


def _target(out_dir: Path, label: str, name: str, used: set[Path]) -> Path:
    """A fresh path ``out_dir/label/name`` (suffixed ``_1``, ``_2``... on a name collision)."""
    path, n = out_dir / label / name, 0
    while path in used:
        n += 1
        path = out_dir / label / f"{Path(name).stem}_{n}{Path(name).suffix}"
    used.add(path)
    return path


def curate_dataset(
    records: pd.DataFrame, out_dir: str | Path, steps: list[str], policy: dict[str, Any]
) -> pd.DataFrame:
    """Apply ``steps`` (subset of :data:`STEPS`) to every image and write a new ImageFolder.

    ``policy`` is the validation policy (``curation`` section and ``confounders.score_threshold``).
    Changed images are written as PNG; untouched ones are byte-copied. Writes and returns the log
    ``out_dir/curation_log.csv``: path, label, split, out_path, status (curated|copied|unreadable),
    steps (``;``-joined), details (JSON). ``out_dir`` must be new or empty.
    """
    unknown = set(steps) - set(STEPS)
    if unknown:
        raise ValueError(f"unknown curation steps {sorted(unknown)}; choose from {STEPS}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty: curation writes a new dataset")
    cfg = _DEFAULTS | (policy.get("curation") or {})
    threshold = (policy.get("confounders") or {}).get("score_threshold", DEFAULT_CONFOUNDER_THRESHOLD)
    src = records["local_path"] if "local_path" in records else records["path"]
    used: set[Path] = set()
    rows = []
    for (_, rec), source in zip(records.iterrows(), src, strict=True):
        rows.append(_curate_one(Path(source), rec, out, steps, cfg, threshold, used))
    log = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    log.to_csv(out / "curation_log.csv", index=False)
    return log


def _curate_one(
    source: Path, rec: pd.Series, out: Path, steps: list[str], cfg: dict, threshold: float, used: set[Path]
) -> dict[str, Any]:
    row = {"path": rec["path"], "label": rec["label"], "split": rec.get("split"), "out_path": None}
    try:
        img = np.asarray(load_rgb(source))
    except BadImageError as exc:
        return row | {"status": "unreadable", "steps": "", "details": json.dumps({"reason": exc.reason})}
    curated, done = _apply_steps(img, steps, cfg, threshold)
    changed = any(v.get("skipped") is None for v in done.values())
    target = _target(out, str(rec["label"]), source.stem + ".png" if changed else source.name, used)
    target.parent.mkdir(parents=True, exist_ok=True)
    if changed:
        Image.fromarray(curated).save(target)
    else:
        shutil.copyfile(source, target)
    status = "curated" if changed else "copied"
    return row | {"out_path": str(target), "status": status, "steps": ";".join(done), "details": json.dumps(done)}


# --------------------------------------------------------------------------- curated versions (A/B)
AB_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
"""The headline metrics an A/B comparison of curated vs original data reports (with deltas)."""
CURATED_MANIFEST = "manifest.csv"
"""Name of the CSV manifest (``path,label,split,source_path``) inside a curated version's folder."""


def curation_key(records: pd.DataFrame, steps: list[str], policy: dict[str, Any]) -> str:
    """16 hex chars identifying a curated version: the source files (path, sha256, label, split), the
    steps in order and the curation settings and threshold that shape the output."""
    cfg = _DEFAULTS | (policy.get("curation") or {})
    threshold = (policy.get("confounders") or {}).get("score_threshold", DEFAULT_CONFOUNDER_THRESHOLD)
    cols = [c for c in ("path", "sha256", "label", "split") if c in records]
    rows = sorted(map(list, records[cols].astype(str).itertuples(index=False, name=None)))
    payload = {"rows": rows, "steps": list(steps), "curation": cfg, "threshold": threshold}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def curated_manifest(log: pd.DataFrame, root: str | Path) -> pd.DataFrame:
    """The CSV manifest of a curated copy from :func:`curate_dataset`'s ``log``.

    One row per written file (``unreadable`` rows have none and are left out) with ``path`` relative
    to ``root`` (the folder the CSV goes into), the label, the **split of its original** and
    ``source_path`` (the original's path), sorted by path. Raises ValueError when a written file has
    no split (split the manifest first), lies outside ``root``, or two rows share an output path.
    """
    root = Path(root).resolve()
    written = log[log["status"].isin(["curated", "copied"])]
    split = written["split"].fillna("").astype(str).str.strip()
    if (split == "").any():
        missing = written.loc[split == "", "path"].head(3).tolist()
        raise ValueError(f"curated rows without a split (e.g. {missing}): split the manifest before curating")
    rel = []
    for out_path in written["out_path"]:
        try:
            rel.append(Path(out_path).resolve().relative_to(root).as_posix())
        except ValueError:
            raise ValueError(f"curated file {out_path} is outside the version folder {root}") from None
    table = pd.DataFrame(
        {
            "path": rel,
            "label": written["label"].astype(str).to_numpy(),
            "split": split.to_numpy(),
            "source_path": written["path"].astype(str).to_numpy(),
        }
    )
    dupes = table["path"][table["path"].duplicated()].tolist()
    if dupes:
        raise ValueError(f"curated output paths listed twice: {dupes[:3]}")
    return table.sort_values("path", ignore_index=True)


def split_mismatches(original: pd.DataFrame, curated: pd.DataFrame) -> pd.DataFrame:
    """Rows where a curated record's split or label differs from its original's, or an original
    (with a split) has no curated record. ``curated`` needs ``source_path`` (as in the curated CSV
    manifest) or is matched by ``path``. Columns: path, label, split, curated_label, curated_split,
    problem (``split_changed``, ``label_changed``, ``missing``, ``unknown_source``)."""
    key = "source_path" if "source_path" in curated else "path"
    cur = curated[[key, "label", "split"]].rename(
        columns={key: "path", "label": "curated_label", "split": "curated_split"}
    )
    merged = original[["path", "label", "split"]].merge(cur, on="path", how="outer", indicator=True)
    problem = np.select(
        [
            merged["_merge"] == "left_only",
            merged["_merge"] == "right_only",
            merged["split"] != merged["curated_split"],
            merged["label"] != merged["curated_label"],
        ],
        ["missing", "unknown_source", "split_changed", "label_changed"],
        default="",
    )
    return merged.assign(problem=problem)[problem != ""].drop(columns="_merge").reset_index(drop=True)


def with_sources(curated_records: pd.DataFrame, manifest_csv: str | Path) -> pd.DataFrame:
    """``curated_records`` (e.g. a :class:`~ml.data.manifest.Manifest`'s records built from ``manifest_csv``)
    with the ``source_path`` column of the curated CSV manifest, matched by absolute path (NaN when a
    record is not in the CSV)."""
    csv = Path(manifest_csv).resolve()
    table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    absolute = [str((csv.parent / p).resolve()) for p in table["path"]]
    sources = dict(zip(absolute, table["source_path"], strict=True))
    out = curated_records.copy()
    out["source_path"] = [sources.get(str(Path(p).resolve())) for p in out["path"]]
    return out


def ab_comparison(
    baseline: dict[str, Any], curated: dict[str, Any], metrics: tuple[str, ...] = AB_METRICS
) -> list[dict[str, Any]]:
    """Rows ``{metric, baseline, curated, delta}`` with ``delta = curated - baseline`` (None where a
    metric is missing on either side)."""
    rows = []
    for name in metrics:
        a, b = baseline.get(name), curated.get(name)
        delta = None if a is None or b is None else float(b) - float(a)
        rows.append(
            {
                "metric": name,
                "baseline": None if a is None else float(a),
                "curated": None if b is None else float(b),
                "delta": delta,
            }
        )
    return rows


@dataclass
class CuratedVersion:
    """A curated copy on disk: its folder, CSV manifest, curation log and whether it was reused."""

    root: Path
    manifest_csv: Path
    log: pd.DataFrame
    reused: bool

    def counts(self) -> dict[str, int]:
        """Files per curation status (curated, copied, unreadable)."""
        return {str(k): int(v) for k, v in self.log["status"].value_counts().sort_index().items()}


def write_curated_version(
    records: pd.DataFrame, dest: str | Path, steps: list[str], policy: dict[str, Any]
) -> CuratedVersion:
    """Curate split ``records`` into the new folder ``dest`` with :func:`curate_dataset` and write its
    CSV manifest (:data:`CURATED_MANIFEST`, from :func:`curated_manifest`, splits preserved).

    The copy is built in a hidden sibling folder and renamed into place, so a ``dest`` holding the
    manifest is complete; it is then reused as it is (name ``dest`` after :func:`curation_key` so that
    a folder only ever holds one request's output). Sources are only read.
    """
    dest = Path(dest).resolve()
    built: list[pd.DataFrame] = []

    def build(tmp: Path) -> None:
        log = curate_dataset(records, tmp, steps, policy)
        log["out_path"] = [
            None if p is None or pd.isna(p) else str(dest / Path(p).relative_to(tmp)) for p in log["out_path"]
        ]
        log.to_csv(tmp / "curation_log.csv", index=False)
        curated_manifest(log, dest).to_csv(tmp / CURATED_MANIFEST, index=False)
        built.append(log)

    if build_version(dest, CURATED_MANIFEST, build, kind="curated"):
        return CuratedVersion(dest, dest / CURATED_MANIFEST, built[0], False)
    return CuratedVersion(dest, dest / CURATED_MANIFEST, pd.read_csv(dest / "curation_log.csv"), True)
