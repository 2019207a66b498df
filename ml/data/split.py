"""Duplicate-aware, stratified, seeded train/val/test splits of a manifest.

Exact duplicates (same SHA-256) and near duplicates (perceptual hashes within ``max_distance`` bits)
form groups (connected components, i.e. union-find over the duplicate pairs); a group never
straddles the splits this module assigns.
"""

from __future__ import annotations

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


def _targets(labels: np.ndarray, fracs: dict[str, float]) -> dict[str, dict[str, int]]:
    """Images wanted per class and held-out split (at least one each)."""
    counts = Counter(labels.tolist())
    return {c: {s: max(1, round(n * f)) for s, f in fracs.items()} for c, n in counts.items()}


def _check_enough(labels: np.ndarray, groups: np.ndarray, targets: dict[str, dict[str, int]]) -> None:
    for label, wanted in sorted(targets.items()):
        mask = labels == label
        n_images, n_groups = int(mask.sum()), len(np.unique(groups[mask]))
        needed = len(wanted) + 1
        if n_groups < needed or n_images <= sum(wanted.values()):
            raise ValueError(
                f"class '{label}' has {n_images} image(s) in {n_groups} duplicate group(s): too few for "
                f"train + {' + '.join(wanted)} (needs at least {needed} distinct groups and more than "
                f"{sum(wanted.values())} images)"
            )


def _gain(group_counts: Counter, current: dict[str, dict[str, int]], targets: dict[str, dict[str, int]],
          split: str) -> int:
    """How much closer to its targets ``split`` gets by taking the group (negative: further)."""
    return sum(
        abs(targets[c][split] - current[c][split]) - abs(targets[c][split] - current[c][split] - k)
        for c, k in group_counts.items()
    )


def _assign(labels: np.ndarray, groups: np.ndarray, fracs: dict[str, float], seed: int) -> np.ndarray:
    """Split per record: whole groups, larger groups first then in seeded random order, greedily
    to the held-out split whose per-class targets they approach most, else to train."""
    out = np.full(len(labels), "train", dtype=object)
    if not fracs or not len(labels):
        return out
    targets = _targets(labels, fracs)
    _check_enough(labels, groups, targets)
    uniq, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    shuffled = np.random.default_rng(seed).permutation(len(uniq))
    order = shuffled[np.argsort(-sizes[shuffled], kind="stable")]
    members = [np.flatnonzero(inverse == g) for g in range(len(uniq))]
    current = {c: dict.fromkeys(fracs, 0) for c in targets}
    for g in order:
        counts = Counter(labels[members[g]].tolist())
        gains = {s: _gain(counts, current, targets, s) for s in sorted(fracs)}
        best = max(gains, key=lambda s: (gains[s], s))
        if gains[best] > 0:
            out[members[g]] = best
            for c, k in counts.items():
                current[c][best] += k
    _check_result(labels, out, fracs)
    return out


def _check_result(labels: np.ndarray, splits: np.ndarray, fracs: dict[str, float]) -> None:
    for label in sorted(set(labels.tolist())):
        present = set(splits[labels == label].tolist())
        missing = [s for s in ("train", *fracs) if s not in present]
        if missing:
            raise ValueError(f"class '{label}': duplicate groups shared with other classes leave no image "
                             f"for split(s) {missing}; lower the fractions or curate the duplicates")


def _leak_rows(records: pd.DataFrame, leaked: np.ndarray, kept: np.ndarray, groups: np.ndarray) -> pd.DataFrame:
    """Bad rows for pool records that duplicate a kept held-out record."""
    kept_by_group = {g: (p, s) for g, p, s in zip(groups[kept], records["path"][kept], records["split"][kept],
                                                  strict=True)}
    rows = []
    for g, path, label in zip(groups[leaked], records["path"][leaked], records["label"][leaked], strict=True):
        other, split = kept_by_group[g]
        rows.append({"path": path, "label": label, "reason": "duplicate_across_splits",
                     "message": f"{path} duplicates {other} of the given '{split}' split; kept out of training"})
    return pd.DataFrame(rows, columns=BAD_COLUMNS)


def split_manifest(
    manifest: Manifest,
    val_frac: float = 1 / 6,
    test_frac: float = 0.0,
    seed: int = 0,
    keep_existing: bool = True,
    max_distance: int | None | Literal["policy"] = POLICY,
) -> Manifest:
    """A new manifest whose ``split`` column is filled with train/val/test, stratified by label.

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
    new.loc[pool, "split"] = _assign(records["label"].to_numpy()[pool], groups[pool], fracs, seed)
    bad = pd.concat([manifest.bad, _leak_rows(records, leaked, kept, groups)], ignore_index=True) if leaked.any() \
        else manifest.bad
    return replace(manifest, records=new[~leaked].reset_index(drop=True), bad=bad)
