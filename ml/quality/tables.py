"""Tables derived from the features table (:func:`ml.quality.features.compute_features`) that the checks read and
the report lists: files not used and why, duplicate pairs and groups (exact and pHash-near, through
:mod:`ml.data.duplicates`, the search the split uses too), leaking pairs, within-split duplicates, identical-bytes
groups and label conflicts, usable images per class, confounder flags per class. Plain pandas/numpy."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ml.data.duplicates import groups_from_pairs, hash_array, near_pairs
from ml.quality.features import ACQUISITION_KINDS, usable_mask
from ml.quality.report import DUPLICATE_GROUP_COLUMNS, MAX_EXAMPLES, MAX_PATHS, bounded

CONFOUNDER_KINDS = ("pen_mark", *ACQUISITION_KINDS)
_KIND_FLAGS = dict(zip(CONFOUNDER_KINDS, ("confounder_flag", *(f"{k}_flag" for k in ACQUISITION_KINDS)), strict=True))


def file_problems(features: pd.DataFrame) -> pd.Series:
    """Why each row is not used: the manifest's ``left_out`` reason, else the decode ``reason`` ('' when used)."""
    reason = features["reason"].fillna("").astype(str)
    if "left_out" not in features:
        return reason
    left_out = features["left_out"].fillna("").astype(str)
    return left_out.where(left_out != "", reason)


def bad_files_table(features: pd.DataFrame) -> pd.DataFrame:
    """The rows that will not be used (:func:`ml.quality.features.usable_mask`), with their reasons."""
    unused = ~usable_mask(features)
    return features.loc[unused, ["path", "label"]].assign(reason=file_problems(features)[unused]).reset_index(drop=True)


def duplicate_pairs(features: pd.DataFrame, max_distance: int) -> pd.DataFrame:
    """Pairs of decoded images whose pHash Hamming distance is <= ``max_distance``
    (:func:`ml.data.duplicates.near_pairs`, the search the split uses too).

    Identical bytes decode identically, so exact duplicates are the distance-0 pairs with equal
    sha256. Columns: ``i``, ``j`` (row positions in ``features``, i < j), ``distance``, ``kind``
    ('exact' for identical sha256, else 'near').
    """
    ok = np.flatnonzero(features["decode_ok"].fillna(False).to_numpy(dtype=bool))
    a, b, dist = near_pairs(hash_array(features["phash"].to_numpy()[ok]), max_distance)
    sha = features["sha256"].to_numpy()[ok]
    return pd.DataFrame(
        {
            "i": ok[a].astype(int),
            "j": ok[b].astype(int),
            "distance": dist.astype(int),
            "kind": np.where(sha[a] == sha[b], "exact", "near"),
        },
        columns=["i", "j", "distance", "kind"],
    )


def _splits(features: pd.DataFrame) -> pd.Series:
    """The split of each row ('unsplit' when the column or the value is missing)."""
    if "split" not in features:
        return pd.Series("unsplit", index=features.index)
    return features["split"].fillna("unsplit").astype(str)


def leaking_pairs_table(features: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """Duplicate pairs whose members sit in different splits, with paths, splits and labels."""
    split = _splits(features).to_numpy()
    cross = pairs[split[pairs["i"]] != split[pairs["j"]]]
    cols = ["path", "label"]
    a = features.iloc[cross["i"]][cols].reset_index(drop=True).add_suffix("_a")
    b = features.iloc[cross["j"]][cols].reset_index(drop=True).add_suffix("_b")
    out = pd.concat([a, b], axis=1)
    out["split_a"], out["split_b"] = split[cross["i"]], split[cross["j"]]
    out["distance"], out["kind"] = cross["distance"].to_numpy(), cross["kind"].to_numpy()
    return out


def duplicate_groups_table(features: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """Every group of exact or near duplicates (connected through ``pairs``) with its paths, labels and splits;
    ``kind`` is 'exact' when all members have the same bytes."""
    group = groups_from_pairs(len(features), pairs["i"].to_numpy(), pairs["j"].to_numpy())
    split, rows = _splits(features), []
    for g in np.flatnonzero(np.bincount(group, minlength=1) > 1):
        members = features[group == g]
        rows.append(
            {
                "group": len(rows),
                "kind": "exact" if members["sha256"].nunique() == 1 else "near",
                "n": len(members),
                "paths": members["path"].astype(str).tolist(),
                "labels": sorted(set(members["label"].astype(str))),
                "splits": sorted(set(split[group == g])),
            }
        )
    return pd.DataFrame(rows, columns=DUPLICATE_GROUP_COLUMNS)


def within_split_duplicates(features: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """Per split: images, redundant copies (images minus duplicate groups) and their share."""
    split = _splits(features)
    same = pairs[split.to_numpy()[pairs["i"]] == split.to_numpy()[pairs["j"]]]
    group = groups_from_pairs(len(features), same["i"].to_numpy(), same["j"].to_numpy())
    table = pd.DataFrame({"split": split.to_numpy(), "group": group})
    out = table.groupby("split").agg(images=("group", "size"), groups=("group", "nunique")).reset_index()
    out["duplicates"] = out["images"] - out["groups"]
    out["duplicate_share"] = out["duplicates"] / out["images"]
    return out.drop(columns="groups")


def content_key(features: pd.DataFrame) -> pd.Series:
    """What makes two files the same picture: the digest of their decoded pixels (``pixel_sha256``),
    else of their bytes (a file that did not decode)."""
    if "pixel_sha256" not in features:
        return features["sha256"].astype(object)
    return features["pixel_sha256"].where(features["pixel_sha256"].notna(), features["sha256"]).astype(object)


def sha_groups(features: pd.DataFrame) -> pd.DataFrame:
    """Groups of decoded images with the same pixels (:func:`content_key`: identical bytes, or the
    same picture under other metadata) with at least two members: ``content``, size, labels,
    splits and ``members`` ('path [label]; ...')."""
    ok = features[features["decode_ok"].fillna(False).astype(bool)]
    named = ok.assign(
        content=content_key(ok),
        split=_splits(ok),
        member=ok["path"].astype(str) + " [" + ok["label"].astype(str) + "]",
    )
    groups = named.groupby("content").agg(
        n=("path", "size"), n_labels=("label", "nunique"), n_splits=("split", "nunique"), members=("member", "; ".join)
    )
    return groups[groups["n"] > 1].reset_index()


def label_conflicts_table(features: pd.DataFrame, groups: pd.DataFrame) -> pd.DataFrame:
    """Rows whose picture (:func:`content_key`) also occurs under another label."""
    bad = groups.loc[groups["n_labels"] > 1, "content"]
    rows = features.assign(content=content_key(features))
    rows = rows[rows["content"].isin(bad) & rows["decode_ok"].fillna(False).astype(bool)]
    cols = ["content", "sha256", "path", "label"] + (["split"] if "split" in features else [])
    return rows[cols].sort_values(["content", "label", "path"]).reset_index(drop=True)


def class_counts(features: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Usable images (:func:`ml.quality.features.usable_mask`) per label over the class map plus any unknown
    label; ratio of each count to the smallest."""
    used = features.loc[usable_mask(features), "label"]
    counts = used.value_counts().reindex(list(dict.fromkeys([*classes, *used])), fill_value=0)
    out = counts.rename_axis("label").rename("count").reset_index()
    smallest = out["count"].min()
    out["ratio_to_min"] = out["count"] / smallest if smallest > 0 else np.inf
    return out


def flagged_by_class(features: pd.DataFrame) -> pd.DataFrame:
    """Per label: images, pen-marked (``confounder_flag``) images and their share, and for each acquisition
    kind the share flagged (``<kind>_flagged_share``; 0 when the features table has no such flag)."""
    flags = features.assign(**{f"_{kind}": _flag(features, col) for kind, col in _KIND_FLAGS.items()})
    out = (
        flags.groupby("label")
        .agg(
            images=("path", "size"),
            flagged=("_pen_mark", "sum"),
            **{kind: (f"_{kind}", "sum") for kind in ACQUISITION_KINDS},
        )
        .reset_index()
    )
    out["flagged_share"] = out["flagged"] / out["images"]
    for kind in ACQUISITION_KINDS:
        out[f"{kind}_flagged_share"] = out.pop(kind) / out["images"]
    return out


def _flag(features: pd.DataFrame, column: str) -> pd.Series:
    if column not in features:
        return pd.Series(False, index=features.index)
    return features[column].fillna(False).astype(bool)


def confounders_by_class(features: pd.DataFrame) -> pd.DataFrame:
    """Per label: images and how many are flagged with each confounder kind (:data:`CONFOUNDER_KINDS`)."""
    flags = pd.DataFrame({kind: _flag(features, col) for kind, col in _KIND_FLAGS.items()})
    out = flags.groupby(features["label"].astype(str)).sum().astype(int)
    return (
        out.assign(images=features.groupby(features["label"].astype(str)).size())
        .rename_axis("label")
        .reset_index()[["label", "images", *CONFOUNDER_KINDS]]
    )


def skin_tone_splits(features: pd.DataFrame, min_train_share: float, min_heldout_images: int) -> pd.DataFrame:
    """Per skin-tone group (ITA, :mod:`ml.quality.skin_tone`; ``unknown`` left out): usable images in
    training and held out (val and test), its share of training, and ``missing_in_train`` (1 when
    at least ``min_heldout_images`` are held out while training has under ``min_train_share``)."""
    from ml.quality.skin_tone import GROUP_NAMES

    tone = features["ita_group"].astype(str) if "ita_group" in features else pd.Series("", index=features.index)
    split = _splits(features)
    train = tone[split.isin(["train", ""])].value_counts()
    held = tone[split.isin(["val", "test"])].value_counts()
    n_train = max(int(train.sum()), 1)
    out = pd.DataFrame({"ita_group": list(GROUP_NAMES), "train": [int(train.get(g, 0)) for g in GROUP_NAMES]}).assign(
        heldout=[int(held.get(g, 0)) for g in GROUP_NAMES]
    )
    out["train_share"] = out["train"] / n_train
    out["missing_in_train"] = ((out["heldout"] >= min_heldout_images) & (out["train_share"] < min_train_share)).astype(
        int
    )
    return out


def skin_tones_by(features: pd.DataFrame) -> pd.DataFrame:
    """Usable images per skin-tone group (rows) and per split and class (columns): what the summary shows."""
    if "ita_group" not in features:
        return pd.DataFrame()
    tone = features["ita_group"].fillna("unknown").astype(str).rename("ita_group")
    by_split = pd.crosstab(tone, _splits(features).replace("", "unsplit").rename("split"))
    by_class = pd.crosstab(tone, features["label"].astype(str))
    by_split.columns = [f"split:{c}" for c in by_split.columns]
    return by_split.join(by_class).reset_index()


def duplicate_examples(features: pd.DataFrame, pairs: pd.DataFrame, within: bool) -> dict[str, Any]:
    """The duplicate groups a check counts, one example each (``id`` names the group, ``reason`` its paths):
    groups inside one split (``within``) or groups spanning splits (leakage)."""
    split = _splits(features).to_numpy()
    same = split[pairs["i"]] == split[pairs["j"]]
    chosen = pairs[same] if within else pairs
    group = groups_from_pairs(len(features), chosen["i"].to_numpy(), chosen["j"].to_numpy())
    examples = []
    for g in np.flatnonzero(np.bincount(group, minlength=1) > 1):
        members = features[group == g]
        splits = sorted(set(split[group == g]))
        if not within and len(splits) < 2:
            continue
        kind = "exact" if members["sha256"].nunique() == 1 else "near"
        paths = [f"{p} [{s}]" for p, s in zip(members["path"].astype(str), split[group == g], strict=True)]
        examples.append(
            {
                "id": f"{kind} duplicates in {', '.join(splits)} ({len(members)} images)",
                "value": len(members),
                "reason": "; ".join(bounded(paths, MAX_PATHS)),
            }
        )
    return {"examples": examples[:MAX_EXAMPLES], "n_more": max(0, len(examples) - MAX_EXAMPLES)}
