"""Label issues: which training images probably carry the wrong label, are a near copy of an image
under another label, or look like nothing else in the set.

The procedure (pure: arrays in, tables out):

1. **Out-of-sample probabilities** (:func:`cross_fitted_probs`): a frozen ImageNet backbone's pooled
   features (computed by the caller), then a standardised, class-balanced logistic regression fitted
   K times, each time on the other K-1 folds (stratified). Every image is scored by a probe that never
   saw it. On 2 cores this costs one forward pass over the set plus K small fits (seconds), where
   cross-fitting a fine-tune would cost K trainings.
2. **Likely mislabelled** (:func:`find_issues`): cleanlab's confident learning
   (``cleanlab.filter.find_label_issues``, ``prune_by_class``), ranked by cleanlab's label quality
   score (the out-of-sample probability of the given label, ``self_confidence``). The suggested label
   is the most probable other class.
3. **Near-duplicate under another label**: the same bytes (SHA-256), or a perceptual hash within the
   validation policy's ``max_phash_distance`` (the one near-duplicate rule, :mod:`ml.data.duplicates`),
   with a different label. Validation sets the exact copies aside (quarantine); here they are listed
   for a person to decide which label is right.
4. **Outlier**: the mean cosine distance to the k nearest images in feature space beyond
   Q3 + (1/t - 1) IQR of all images' means (cleanlab Datalab's outlier rule, t = 0.37).

The estimated noise matrix (:func:`noise_table`: which given labels hide which true ones, from
cleanlab's confident joint) is the thesis's table of confused label pairs, measured on the data.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

ISSUE_COLUMNS = ["path", "given_label", "suggested_label", "score", "reason", "note"]
REASONS = ("likely_mislabelled", "near_duplicate_other_label", "outlier")
OUTLIER_T = 0.37037  # cleanlab Datalab's default threshold for feature-based outliers


def cross_fitted_probs(
    features: np.ndarray, labels: np.ndarray, n_classes: int, folds: int = 5, c: float = 0.1, seed: int = 0
) -> np.ndarray:
    """(N, n_classes) out-of-sample probabilities: row i from a probe fitted on the folds without i.
    ``folds`` shrinks to the smallest class's count; a class with one image raises ValueError naming it."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    counts = np.bincount(labels, minlength=n_classes)
    present = counts[counts > 0]
    if present.min() < 2:
        raise ValueError(f"class index {int(np.flatnonzero(counts == 1)[0])} has one image: nothing to cross-fit with")
    k = int(min(folds, present.min()))
    probs = np.zeros((len(labels), n_classes))
    for train, held in StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(features, labels):
        scaler = StandardScaler().fit(features[train])
        clf = LogisticRegression(C=c, max_iter=2000, class_weight="balanced")
        clf.fit(scaler.transform(features[train]), labels[train])
        probs[np.ix_(held, clf.classes_)] = clf.predict_proba(scaler.transform(features[held]))
    return probs


def label_quality(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """cleanlab's self-confidence label quality score: the out-of-sample probability of the given label."""
    from cleanlab.rank import get_label_quality_scores

    return get_label_quality_scores(labels, probs, method="self_confidence")


def _suggested(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """The most probable class other than the given one."""
    other = probs.copy()
    other[np.arange(len(labels)), labels] = -1.0
    return other.argmax(axis=1)


def mislabelled(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Boolean mask of cleanlab's confident-learning label issues."""
    from cleanlab.filter import find_label_issues

    # prune_by_class: on the synthetic set with 5% planted flips (8 draws) it found 0.86 of them at
    # precision 0.73, where cleanlab's default prune_by_noise_rate found 0.79 at 0.71 (probe C 0.1)
    return find_label_issues(labels, probs, filter_by="prune_by_class", n_jobs=1)


def outliers(features: np.ndarray, k: int = 10, t: float = OUTLIER_T) -> tuple[np.ndarray, np.ndarray]:
    """``(mask, mean distance)``: images whose mean cosine distance to their k nearest others is
    beyond Q3 + (1/t - 1) IQR of all the means (Datalab's rule)."""
    from sklearn.neighbors import NearestNeighbors

    k = min(k, len(features) - 1)
    dist, _ = NearestNeighbors(n_neighbors=k + 1, metric="cosine").fit(features).kneighbors(features)
    mean = dist[:, 1:].mean(axis=1)
    q1, q3 = np.percentile(mean, [25, 75])
    return mean > q3 + (1 / t - 1) * (q3 - q1), mean


def copy_groups(images: Sequence[np.ndarray], digests: Sequence[str], max_distance: int) -> np.ndarray:
    """Duplicate group of each image: the same bytes (SHA-256 ``digests``) or pHashes of the decoded
    ``images`` at most ``max_distance`` bits apart (the validation policy's near-duplicate rule)."""
    from PIL import Image

    from ml.data.duplicates import exact_pairs, groups_from_pairs, hash_array, near_pairs, phash

    hashes = hash_array([phash(Image.fromarray(np.asarray(img))) for img in images])
    rows, cols, _ = near_pairs(hashes, max_distance)
    same_rows, same_cols = exact_pairs(list(digests))
    return groups_from_pairs(len(digests), np.concatenate([rows, same_rows]), np.concatenate([cols, same_cols]))


def other_label_copies(labels: np.ndarray, groups: np.ndarray) -> dict[int, list[int]]:
    """For each image in a duplicate group (``groups[i]`` >= 0; -1 is none) that holds another label:
    the other members with a different label."""
    out: dict[int, list[int]] = {}
    for g in np.unique(groups[groups >= 0]):
        members = np.flatnonzero(groups == g)
        if len(set(labels[members].tolist())) > 1:
            for i in members:
                out[int(i)] = [int(j) for j in members if labels[j] != labels[i]]
    return out


def find_issues(
    paths: Sequence[str],
    labels: np.ndarray,
    classes: Sequence[str],
    probs: np.ndarray,
    features: np.ndarray,
    groups: np.ndarray,
    neighbours: int = 10,
) -> pd.DataFrame:
    """One row per flagged image (:data:`ISSUE_COLUMNS`), worst first: ``score`` is the label quality
    (low: the given label is unlikely); ``reason`` joins the :data:`REASONS` that hold with ``;``;
    ``note`` says what each found. ``groups`` are the duplicate groups of the images (-1: none)."""
    quality = label_quality(labels, probs)
    suggested = _suggested(labels, probs)
    wrong = mislabelled(labels, probs)
    far, mean = outliers(features, neighbours)
    copies = other_label_copies(labels, groups)
    rows = []
    for i, path in enumerate(paths):
        reasons, notes = [], []
        if wrong[i]:
            reasons.append("likely_mislabelled")
            notes.append(
                f"p({classes[labels[i]]}) {quality[i]:.2f}, p({classes[suggested[i]]}) {probs[i, suggested[i]]:.2f}"
            )
        if i in copies:
            reasons.append("near_duplicate_other_label")
            notes.append("copy of " + ", ".join(f"{paths[j]} ({classes[labels[j]]})" for j in copies[i][:3]))
        if far[i]:
            reasons.append("outlier")
            notes.append(f"mean cosine distance {mean[i]:.3f} to its {min(neighbours, len(paths) - 1)} nearest images")
        if reasons:
            other = classes[labels[copies[i][0]]] if i in copies and not wrong[i] else classes[suggested[i]]
            rows.append([path, classes[labels[i]], other, float(quality[i]), ";".join(reasons), "; ".join(notes)])
    table = pd.DataFrame(rows, columns=ISSUE_COLUMNS)
    return table.sort_values(["score", "path"], ignore_index=True)


def noise_table(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str], top: int = 10) -> pd.DataFrame:
    """The ``top`` off-diagonal cells of cleanlab's estimated joint of (given, true) labels: which
    given label hides which true label, as a share of the set and as an image count."""
    from cleanlab.count import estimate_joint

    joint = estimate_joint(labels, probs)
    n = len(labels)
    cells = [
        (classes[g], classes[t], float(joint[g, t]), round(float(joint[g, t]) * n))
        for g in range(len(classes))
        for t in range(len(classes))
        if g != t and joint[g, t] > 0
    ]
    table = pd.DataFrame(cells, columns=["given_label", "true_label", "share", "images"])
    return table.sort_values(["share", "given_label"], ascending=[False, True], ignore_index=True).head(top)


def probe_warning(accuracy: float, minimum: float) -> str | None:
    """What to tell a reviewer when the probes agree with the given labels too rarely for their
    disagreements to point at wrong labels; None when they agree often enough."""
    if accuracy >= minimum:
        return None
    return (
        f"the probes agree with the given labels on {accuracy:.0%} of the images (below {minimum:.0%}): most "
        "'likely mislabelled' flags mark images the frozen features cannot place, not wrong labels. Review "
        "from the top (lowest score) and the copies under another label first; relabel only what a person confirms."
    )


def scored(flagged: pd.DataFrame, truth: set[str]) -> dict[str, float]:
    """Precision and recall of ``flagged`` paths against the paths known to be wrong (``truth``)."""
    found = set(flagged["path"])
    hit = len(found & truth)
    return {
        "precision": hit / len(found) if found else 0.0,
        "recall": hit / len(truth) if truth else 1.0,
        "flagged": len(found),
        "planted": len(truth),
    }
