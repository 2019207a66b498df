"""The one near-duplicate search: perceptual hashes (64-bit pHash) compared by Hamming distance,
plus exact (same SHA-256) pairs and the groups they form.

The split (:mod:`ml.data.split`, duplicates never straddle splits) and validation
(:mod:`ml.quality.validation`, leakage and within-split duplicates) both use it, with one
threshold: ``duplicates_leakage.phash_max_distance`` in ``policies/validation.yaml``.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ml.data.images import load_rgb
from ml.policies import load_policy

_CHUNK = 512  # rows per block of the pairwise distance matrix (bounds memory to CHUNK x N)


def policy_max_distance(policy_path: str | Path | None = None) -> int:
    """The near-duplicate threshold of the validation policy (default: the settings' policies dir),
    read by :func:`ml.policies.load_policy` (the whole file is checked)."""
    return int(load_policy("validation", policy_path)["duplicates_leakage"]["phash_max_distance"])


def phash(img: Image.Image) -> str:
    """64-bit perceptual hash as 16 hex digits (imagehash's ``phash``, hash_size 8)."""
    return str(imagehash.phash(img))


def phash_files(paths: Sequence[str | Path], workers: int = 4) -> list[str]:
    """:func:`phash` of each decoded file (EXIF-rotated RGB, as everywhere else)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda p: phash(load_rgb(str(p))), paths))


def hash_array(hex_hashes: Sequence[str]) -> np.ndarray:
    """Hex pHashes -> uint64 array."""
    return np.array([int(h, 16) for h in hex_hashes], dtype=np.uint64)


def near_pairs(hashes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(i, j, distance)`` for every pair i < j of uint64 hashes at most ``max_distance`` bits apart."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    rows, cols, dists = [], [], []
    for start in range(0, len(hashes), _CHUNK):
        dist = np.bitwise_count(hashes[start : start + _CHUNK, None] ^ hashes[None, :])
        a, b = np.nonzero(dist <= max_distance)
        keep = a + start < b
        rows.append(a[keep] + start)
        cols.append(b[keep])
        dists.append(dist[a[keep], b[keep]].astype(np.int64))
    empty = np.empty(0, np.int64)
    return (np.concatenate(rows or [empty]), np.concatenate(cols or [empty]), np.concatenate(dists or [empty]))


def exact_pairs(digests: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Pairs linking every file to the first file with the same SHA-256 (self-pairs included)."""
    _, first, inverse = np.unique(np.asarray(digests, dtype=str), return_index=True, return_inverse=True)
    return first[inverse], np.arange(len(digests))


def groups_from_pairs(n: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Connected components of the pair graph: ids 0..G-1 in order of first member."""
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels.astype(np.int64)
