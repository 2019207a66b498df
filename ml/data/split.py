"""Duplicate-aware, stratified, seeded train/val/test splits of a manifest, stable across
dataset versions.

Exact duplicates (same SHA-256) and near duplicates (perceptual hashes within ``max_distance`` bits)
form groups (connected components, i.e. union-find over the duplicate pairs); a group never
straddles the splits this module assigns. A group's split depends on its content and the seed
only (see "assigning splits" below), so an image keeps its split in every later version of the
dataset: the held-out set stays held out while images are added and removed.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from ml.data.duplicates import exact_pairs, groups_from_pairs, hash_array, near_pairs, phash_files, policy_max_distance
from ml.data.manifest import BAD_COLUMNS, Manifest
from ml.storage import sha256_file

HELD_OUT = ("test", "val")
POLICY = "policy"  # max_distance: the validation policy's near-duplicate threshold


def duplicate_groups(
    records: pd.DataFrame | Sequence[str | Path],
    max_distance: int | None | Literal["policy"] = POLICY,
    workers: int = 4,
) -> np.ndarray:
    """Group id per record: same SHA-256, or perceptual hashes at most ``max_distance`` bits apart
    (:mod:`ml.data.duplicates`; ``"policy"``: the threshold of ``policies/validation.yaml``).

    ``records`` is a manifest's records (``local_path`` and ``sha256`` are used) or a list of paths.
    ``max_distance=None`` groups exact duplicates only (no decoding). Ids are 0..G-1 in order of
    first appearance.
    """
    if isinstance(records, pd.DataFrame):
        paths, digests = records["local_path"].astype(str).tolist(), records["sha256"].tolist()
    else:
        paths = [str(p) for p in records]
        digests = [sha256_file(p) for p in paths]
    rows, cols = exact_pairs(digests)
    if max_distance == POLICY:
        max_distance = policy_max_distance()
    if max_distance is not None and paths:
        near_rows, near_cols, _ = near_pairs(hash_array(phash_files(paths, workers)), max_distance)
        rows, cols = np.concatenate([rows, near_rows]), np.concatenate([cols, near_cols])
    return groups_from_pairs(len(paths), rows, cols)


# --- assigning splits --------------------------------------------------------------------------
#
# A group's split is a function of the group alone: its content key (the smallest SHA-256 of its
# members) and the seed hash to a number u in [0, 1), and fixed intervals of [0, 1) taken from the
# fractions (test first, then val, the rest train) decide. A group that is in a later dataset
# version with the same members lands in the same split whatever was added or removed around it;
# new images never move old ones. Every class gets each split's fraction of its groups in
# expectation (u is uniform and independent of the label): the per-class quantile rule is "the
# groups of a class whose u falls below the test quantile f_test are test, between f_test and
# f_test + f_val val", the same absolute quantiles for every class and every version (quantiles of
# the class's own ranks would move images whenever the class grows).
#
# The exceptions, both rare: a group that gains or loses a member may change its key (it moves
# when the new smallest digest hashes into another interval); and a class whose groups leave a split
# empty by the intervals gets one group moved there (the nearest by u, taken from train when it
# can be), which can move back once the class has a group of its own in that split. The promotion
# gate checks its held-out images against the models' training images for these cases.

_U_SCALE = float(2**64)


def _unit_hash(key: str, seed: int) -> float:
    """``key`` and ``seed`` hashed to [0, 1) (the first 8 bytes of a SHA-256)."""
    digest = hashlib.sha256(f"skinflow-split:{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _U_SCALE


def _intervals(fracs: dict[str, float]) -> dict[str, tuple[float, float]]:
    """``[lo, hi)`` of each split on [0, 1): test first (so that changing val_frac never moves test
    images), then val, then train."""
    out, lo = {}, 0.0
    for split in sorted(fracs, key=lambda s: (s != "test", s)):
        out[split] = (lo, lo + fracs[split])
        lo += fracs[split]
    out["train"] = (lo, 1.0)
    return out


def group_units(digests: Sequence[str], groups: np.ndarray, seed: int) -> np.ndarray:
    """u in [0, 1) per record: the hash of its group's smallest SHA-256 with the seed."""
    frame = pd.DataFrame({"group": groups, "sha256": list(digests)})
    keys = frame.groupby("group")["sha256"].transform("min")
    cache = {k: _unit_hash(k, seed) for k in keys.unique()}
    return keys.map(cache).to_numpy(dtype=float)


def _targets(labels: np.ndarray, fracs: dict[str, float]) -> dict[str, dict[str, int]]:
    """Images expected per class and held-out split (at least one each): what sizes the check."""
    counts = Counter(labels.tolist())
    return {c: {s: max(1, round(n * f)) for s, f in fracs.items()} for c, n in counts.items()}


def _check_enough(labels: np.ndarray, groups: np.ndarray, targets: dict[str, dict[str, int]]) -> None:
    """Raises ValueError naming every class too small for the splits (not only the first)."""
    small = []
    for label, wanted in sorted(targets.items()):
        mask = labels == label
        n_images, n_groups = int(mask.sum()), len(np.unique(groups[mask]))
        needed = len(wanted) + 1
        if n_groups < needed or n_images <= sum(wanted.values()):
            small.append(
                f"class '{label}' has {n_images} image(s) in {n_groups} duplicate group(s), needs at least {needed} "
                f"distinct groups and more than {sum(wanted.values())} images"
            )
    if small:
        held = " + ".join(next(iter(targets.values())))
        head = "" if len(small) == 1 else f"{len(small)} classes are too small: "
        raise ValueError(f"{head}{'; '.join(small)}: too few for train + {held}")


def _distance(u: float, interval: tuple[float, float]) -> float:
    lo, hi = interval
    return max(lo - u, 0.0, u - hi)


def _fill_empty(
    out: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    units: np.ndarray,
    intervals: dict[str, tuple[float, float]],
) -> None:
    """Give every class at least one group in each split: a class left without one gets the
    group nearest to that split's interval by u, from train when it can, from a split where the
    class keeps another group otherwise (in place)."""
    for label in sorted(set(labels.tolist())):
        for split in intervals:  # held-out splits first, train last
            mask = labels == label
            if (out[mask] == split).any():
                continue
            candidates = []
            for g in np.unique(groups[mask]):
                source = out[groups == g][0]
                if (out[mask & (groups != g)] == source).any():
                    u = units[groups == g][0]
                    candidates.append((source != "train", _distance(u, intervals[split]), u, g))
            if candidates:
                out[groups == min(candidates)[3]] = split


def _assign(
    labels: np.ndarray, groups: np.ndarray, digests: Sequence[str], fracs: dict[str, float], seed: int
) -> np.ndarray:
    """Split per record from its group's u (see above): whole groups, stable across versions."""
    out = np.full(len(labels), "train", dtype=object)
    if not fracs or not len(labels):
        return out
    _check_enough(labels, groups, _targets(labels, fracs))
    units = group_units(digests, groups, seed)
    intervals = _intervals(fracs)
    for split, (lo, hi) in intervals.items():
        out[(units >= lo) & (units < hi)] = split
    _fill_empty(out, labels, groups, units, intervals)
    _check_result(labels, out, fracs)
    return out


def _check_result(labels: np.ndarray, splits: np.ndarray, fracs: dict[str, float]) -> None:
    for label in sorted(set(labels.tolist())):
        present = set(splits[labels == label].tolist())
        missing = [s for s in ("train", *fracs) if s not in present]
        if missing:
            raise ValueError(
                f"class '{label}': duplicate groups shared with other classes leave no image "
                f"for split(s) {missing}; lower the fractions or curate the duplicates"
            )


def _leak_rows(records: pd.DataFrame, leaked: np.ndarray, kept: np.ndarray, groups: np.ndarray) -> pd.DataFrame:
    """Bad rows for pool records that duplicate a kept held-out record."""
    kept_by_group = {
        g: (p, s) for g, p, s in zip(groups[kept], records["path"][kept], records["split"][kept], strict=True)
    }
    rows = []
    for g, path, label in zip(groups[leaked], records["path"][leaked], records["label"][leaked], strict=True):
        other, split = kept_by_group[g]
        rows.append(
            {
                "path": path,
                "label": label,
                "reason": "duplicate_across_splits",
                "message": f"{path} duplicates {other} of the given '{split}' split; kept out of training",
            }
        )
    return pd.DataFrame(rows, columns=BAD_COLUMNS)


def split_manifest(
    manifest: Manifest,
    val_frac: float = 1 / 6,
    test_frac: float = 0.0,
    seed: int = 0,
    keep_existing: bool = True,
    max_distance: int | None | Literal["policy"] = POLICY,
) -> Manifest:
    """A new manifest whose ``split`` column is filled with train/val/test, stratified by label
    and stable across versions: a record's split is a function of its duplicate group's contents
    and ``seed`` (the rule above ``_assign``), not of the other records.

    With ``keep_existing`` the source's val/test records stay where they are, the fractions apply
    to the remaining (train or unassigned) records, and only splits the source lacks are carved
    (e.g. isic9's train/test gives train/val/test). Records that duplicate a kept held-out record
    move to ``bad`` (reason ``duplicate_across_splits``) so they cannot leak into training.
    Raises ValueError naming a class that is too small for the requested splits.
    """
    if not (0 <= val_frac < 1 and 0 <= test_frac < 1 and val_frac + test_frac < 1):
        raise ValueError(f"val_frac={val_frac} and test_frac={test_frac} must be in [0, 1) and sum below 1")
    records = manifest.records.reset_index(drop=True)
    groups = duplicate_groups(records, max_distance=max_distance)
    kept = records["split"].isin(HELD_OUT).to_numpy() if keep_existing else np.zeros(len(records), bool)
    leaked = ~kept & np.isin(groups, groups[kept])
    pool = ~kept & ~leaked
    given = set(records["split"][kept])
    fracs = {s: f for s, f in (("val", val_frac), ("test", test_frac)) if f > 0 and s not in given}
    new = records.copy()
    new.loc[pool, "split"] = _assign(
        records["label"].to_numpy()[pool], groups[pool], records["sha256"].to_numpy()[pool], fracs, seed
    )
    bad = (
        pd.concat([manifest.bad, _leak_rows(records, leaked, kept, groups)], ignore_index=True)
        if leaked.any()
        else manifest.bad
    )
    return replace(manifest, records=new[~leaked].reset_index(drop=True), bad=bad)


def split_digests(manifest: Manifest, splits: str | Sequence[str]) -> list[str]:
    """SHA-256 of the records in ``splits`` (one name or several), in record order: the order of
    :meth:`ml.data.cache.ImageCache.subset`, so ``split_digests(manifest, "test")`` names the images
    of ``cache.subset("test")`` one by one."""
    wanted = [splits] if isinstance(splits, str) else list(splits)
    records = manifest.records
    return records.loc[records["split"].isin(wanted), "sha256"].astype(str).tolist()
