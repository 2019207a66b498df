"""The post-hoc augmentation check (thesis ch. 5, section 4 of the digest, last table): do GAN
samples of a two-label pool carry the pool's class information?

A ProGAN is trained on labels A and B pooled at a known share r of A. Binary classifiers trained
on real A-vs-B images then label the synthetic images; if the samples carry the right class
information, the share they call A recovers r. Here:

- :func:`pool_indices`: the pool at ratio r (as many images as the scarcer label allows).
- :func:`ratio_estimates`: one classifier's estimate of r, two ways: the share of samples
  predicted A (posterior > 0.5) and the mean posterior of A.
- :func:`estimate_table`, :func:`estimate_summary`: the thesis's table form per run, the mean and
  spread of the estimates and the error against r.
- :func:`memorisation_test`: nearest-neighbour distances synthetic -> training against
  training -> training (leave one out) in a feature space; a generator that copies its training
  images puts many samples closer to a training image than training images are to each other.
- :func:`decide`: the verdict from ``policies/augcheck.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ml.policies import build_policy
from ml.train.precision import autocast
from ml.train.transforms import Stats, to_float_batch

SAFE, NOT_SAFE = "safe to consider as augmentation", "not safe"


@dataclass(frozen=True)
class AugCheckPolicy:
    """Thresholds of the verdict (see ``policies/augcheck.yaml``)."""

    estimate: str = "mean_posterior"
    tolerance: float = 0.10
    max_spread: float = 0.10
    nn_quantile: float = 0.05
    max_memorised_share: float = 0.15
    control_tolerance: float = 0.10
    single_class_tolerance: float = 0.20

    def __post_init__(self) -> None:
        if self.estimate not in ("mean_posterior", "share_predicted"):
            raise ValueError(f"estimate must be mean_posterior or share_predicted, got {self.estimate!r}")
        if not 0 < self.nn_quantile < 1:
            raise ValueError(f"nn_quantile must lie in (0, 1), got {self.nn_quantile}")

    @classmethod
    def load(cls, path: str | Path | None = None) -> AugCheckPolicy:
        """The policy at ``path`` (default: ``augcheck.yaml`` in the settings' ``policies_dir``):
        every field, no other key (:func:`ml.policies.load_policy`; mistakes are ``PolicyError``)."""
        return build_policy("augcheck", path, cls, [f.name for f in fields(cls)])


# --- the pool and the binary task ----------------------------------------------------------


def pool_counts(n_a: int, n_b: int, ratio: float) -> tuple[int, int]:
    """The largest pool with a share ``ratio`` of A that ``n_a`` A and ``n_b`` B images allow."""
    if not 0 < ratio < 1:
        raise ValueError(f"ratio must lie in (0, 1), got {ratio}")
    total = int(min(n_a / ratio, n_b / (1 - ratio)) + 1e-9)
    for n in range(total, 0, -1):  # rounding may ask one image too many of a label
        k = int(round(ratio * n))
        if k <= n_a and n - k <= n_b and 0 < k < n:
            return k, n - k
    raise ValueError(f"{n_a} images of label 1 and {n_b} of label 2 cannot make a pool at ratio {ratio}")


def pool_indices(labels: np.ndarray, a: int, b: int, ratio: float, seed: int) -> np.ndarray:
    """Indices of a pool of labels ``a`` and ``b`` with a share ``ratio`` of ``a`` (seeded draw)."""
    labels = np.asarray(labels)
    idx_a, idx_b = np.flatnonzero(labels == a), np.flatnonzero(labels == b)
    k_a, k_b = pool_counts(len(idx_a), len(idx_b), ratio)
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.choice(idx_a, k_a, replace=False), rng.choice(idx_b, k_b, replace=False)]))


def binary_subset(images: np.ndarray, labels: np.ndarray, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
    """The images of labels ``a`` and ``b`` with binary labels: 0 = A, 1 = B."""
    keep = (labels == a) | (labels == b)
    return images[keep], (labels[keep] == b).astype(np.int64)


def mix_at_ratio(images_a: np.ndarray, images_b: np.ndarray, ratio: float, seed: int) -> np.ndarray:
    """A mix of real images at share ``ratio`` of A (the estimator's control), as large as possible."""
    k_a, k_b = pool_counts(len(images_a), len(images_b), ratio)
    rng = np.random.default_rng(seed)
    return np.concatenate(
        [
            images_a[rng.choice(len(images_a), k_a, replace=False)],
            images_b[rng.choice(len(images_b), k_b, replace=False)],
        ]
    )


# --- estimates -----------------------------------------------------------------------------


def ratio_estimates(prob_a: np.ndarray) -> dict[str, float]:
    """One classifier's estimate of the share of A: samples predicted A, mean posterior of A."""
    p = np.asarray(prob_a, dtype=np.float64)
    if p.ndim != 1 or len(p) == 0:
        raise ValueError(f"prob_a must be a non-empty 1-d array, got shape {p.shape}")
    return {"share_predicted": float(np.mean(p > 0.5)), "mean_posterior": float(p.mean())}


def estimate_table(runs: list[dict[str, Any]], label_a: str, label_b: str, estimate: str) -> list[dict[str, Any]]:
    """The thesis's table: binary model accuracy, label-1 estimate, label-2 estimate (in %)."""
    return [
        {
            "run": i + 1,
            "seed": r["seed"],
            "binary model accuracy": round(100 * r["val_accuracy"], 2),
            f"{label_a} estimate": round(100 * r[estimate], 2),
            f"{label_b} estimate": round(100 * (1 - r[estimate]), 2),
        }
        for i, r in enumerate(runs)
    ]


def estimate_summary(values: list[float], ratio: float) -> dict[str, float]:
    """Mean, spread (sample std; range) of the estimates and the mean's error against ``ratio``."""
    v = np.asarray(values, dtype=np.float64)
    mean = float(v.mean())
    return {
        "mean": mean,
        "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
        "min": float(v.min()),
        "max": float(v.max()),
        "range": float(v.max() - v.min()),
        "error": mean - ratio,
        "abs_error": abs(mean - ratio),
        "n": len(v),
    }


# --- memorisation --------------------------------------------------------------------------


@torch.no_grad()
def penultimate_features(
    model: nn.Module,
    head: nn.Module,
    images: np.ndarray,
    norm: Stats,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    batch_size: int = 128,
) -> np.ndarray:
    """The inputs of ``head`` (a classifier's last layer) for uint8 NHWC ``images``, L2-normalised."""
    captured: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0].detach().float().cpu()))
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).to(device)
            with autocast(device, amp_dtype):
                model(to_float_batch(batch, *norm))
    finally:
        hook.remove()
        model.train(was_training)
    feats = torch.cat(captured).flatten(1)
    return torch.nn.functional.normalize(feats, dim=1).numpy()


def nearest_neighbours(
    query: np.ndarray, reference: np.ndarray, exclude_self: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distance from each query row to its nearest reference row, and that row's index;
    ``exclude_self``: query is reference, and a row is not its own neighbour (leave one out)."""
    q = torch.from_numpy(np.asarray(query, dtype=np.float64))
    r = torch.from_numpy(np.asarray(reference, dtype=np.float64))
    if exclude_self and len(r) < 2:
        raise ValueError("leave-one-out distances need at least 2 reference rows")
    dists, idxs = [], []
    for start in range(0, len(q), 1024):
        d = torch.cdist(q[start : start + 1024], r)
        if exclude_self:
            rows = torch.arange(start, min(start + 1024, len(q)))
            d[rows - start, rows] = float("inf")
        m, i = d.min(dim=1)
        dists.append(m)
        idxs.append(i)
    return torch.cat(dists).numpy(), torch.cat(idxs).numpy()


@dataclass
class MemorisationResult:
    synthetic_to_train: np.ndarray  # each synthetic image's NN distance to the training images
    train_to_train: np.ndarray  # each training image's NN distance to the other training images
    nearest_train: np.ndarray  # index of each synthetic image's nearest training image
    threshold: float  # the nn_quantile of train_to_train
    memorised_share: float  # share of synthetic images closer than threshold
    expected_share: float  # nn_quantile: that share when samples are as novel as a new real image
    detected: bool
    closest: list[int] = field(default_factory=list)  # synthetic indices, closest first

    def summary(self) -> dict[str, Any]:
        return {
            "median_synthetic_to_train": float(np.median(self.synthetic_to_train)),
            "median_train_to_train": float(np.median(self.train_to_train)),
            "distance_ratio": float(np.median(self.synthetic_to_train) / max(np.median(self.train_to_train), 1e-12)),
            "threshold": self.threshold,
            "memorised_share": self.memorised_share,
            "expected_share": self.expected_share,
            "detected": self.detected,
        }


def memorisation_test(
    synthetic: np.ndarray, train: np.ndarray, quantile: float, max_share: float, closest: int = 8
) -> MemorisationResult:
    """Compare synthetic -> training NN distances with training -> training ones (features).

    A new image from the training distribution falls below the ``quantile`` of the training
    images' leave-one-out NN distances with probability about ``quantile``; memorisation is
    detected when more than ``max_share`` of the synthetic images do."""
    s2t, nearest = nearest_neighbours(synthetic, train)
    t2t, _ = nearest_neighbours(train, train, exclude_self=True)
    threshold = float(np.quantile(t2t, quantile))
    share = float(np.mean(s2t < threshold))
    return MemorisationResult(
        s2t,
        t2t,
        nearest,
        threshold,
        share,
        quantile,
        share > max_share,
        [int(i) for i in np.argsort(s2t, kind="stable")[:closest]],
    )


def pair_grid(synthetic: np.ndarray, train: np.ndarray, memo: MemorisationResult) -> tuple[np.ndarray, list[str]]:
    """The closest synthetic/training pairs side by side (synthetic, then its nearest real image),
    with titles, for :func:`ml.eval.plots.save_image_grid` with ``ncols=2``."""
    images, titles = [], []
    for i in memo.closest:
        j = int(memo.nearest_train[i])
        images += [synthetic[i], train[j]]
        titles += [f"synthetic {i} d={memo.synthetic_to_train[i]:.3f}", f"nearest train {j}"]
    return np.stack(images), titles


# --- the verdict ---------------------------------------------------------------------------


@dataclass
class Verdict:
    safe: bool
    reasons: list[str]

    @property
    def text(self) -> str:
        return SAFE if self.safe else NOT_SAFE

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.text, "safe": self.safe, "reasons": self.reasons}


def decide(
    ratio: float,
    summary: dict[str, float],
    memorised: dict[str, Any],
    policy: AugCheckPolicy,
    control: dict[str, Any] | None = None,
) -> Verdict:
    """Safe only if the mean estimate lies within ``tolerance`` of ``ratio``, the spread (std
    across classifiers) is below ``max_spread`` and memorisation is not detected. A failed
    control (:func:`ml.gan.check.control`: real images mixed at ``ratio`` not recovered, or one
    label alone not estimated near 1 or 0) is a reason too: then the classifiers cannot tell, and
    an estimate near ``ratio`` (at 0.5 even chance gives one) vouches for nothing."""
    reasons = []
    if summary["abs_error"] > policy.tolerance:
        reasons.append(
            f"mean estimate {summary['mean']:.3f} is {summary['abs_error']:.3f} from r={ratio:g} "
            f"(tolerance {policy.tolerance:g})"
        )
    if summary["std"] >= policy.max_spread:
        reasons.append(
            f"estimates spread {summary['std']:.3f} (std over {summary['n']} classifiers; "
            f"range {summary['min']:.3f}..{summary['max']:.3f}) is not below {policy.max_spread:g}"
        )
    if memorised["detected"]:
        reasons.append(
            f"memorisation: {memorised['memorised_share']:.1%} of synthetic images are closer to a "
            f"training image than the {policy.nn_quantile:.0%} quantile of training-to-training distances "
            f"(limit {policy.max_memorised_share:.0%})"
        )
    if control is not None:
        mixed, only_a, only_b = control["mixed"], control["only_a"], control["only_b"]
        if mixed["abs_error"] > policy.control_tolerance:
            reasons.append(
                f"control failed: real held-out images mixed at r={ratio:g} were estimated at "
                f"{mixed['mean']:.3f} (tolerance {policy.control_tolerance:g}), so the classifiers cannot "
                "measure the ratio"
            )
        if only_a["abs_error"] > policy.single_class_tolerance or only_b["abs_error"] > policy.single_class_tolerance:
            reasons.append(
                f"control failed: real held-out images of label 1 alone were estimated at "
                f"{only_a['mean']:.3f} and of label 2 alone at {only_b['mean']:.3f} (should be ~1 and ~0, "
                f"tolerance {policy.single_class_tolerance:g}): the classifiers do not tell the labels "
                "apart, so agreement with r would mean nothing"
            )
    return Verdict(not reasons, reasons)
