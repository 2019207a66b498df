"""Performance per subgroup of the images (skin-tone groups, :mod:`ml.quality.skin_tone`): balanced
accuracy and accuracy per group with its image count and a Wilson interval, through Fairlearn's
``MetricFrame``; and the gate's rule on them: a challenger that loses more than ``max_group_loss``
balanced accuracy against the champion on any group with enough images is kept out.

Groups named ``unknown`` (too little skin to estimate a tone) are left out of the rule: they mix
whatever the estimate could not place."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

UNRATED = ("unknown", "", "nan", "None")
GROUP_COLUMNS = ["group", "n", "balanced_accuracy", "accuracy", "accuracy_lo", "accuracy_hi"]


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of ``k`` successes in ``n`` trials (95% by default)."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(centre - half), float(centre + half)


def group_metrics(y_true: Sequence[int], y_pred: Sequence[int], groups: Sequence[str]) -> pd.DataFrame:
    """One row per group (:data:`GROUP_COLUMNS`), largest first."""
    from fairlearn.metrics import MetricFrame
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    y, p, g = np.asarray(y_true), np.asarray(y_pred), np.asarray(groups).astype(str)
    if not len(y):
        return pd.DataFrame(columns=GROUP_COLUMNS)
    frame = MetricFrame(
        metrics={"balanced_accuracy": balanced_accuracy_score, "accuracy": accuracy_score, "n": lambda t, _: len(t)},
        y_true=y,
        y_pred=p,
        sensitive_features=pd.Series(g, name="group"),
    )
    out = frame.by_group.reset_index()
    out["n"] = out["n"].astype(int)
    bounds = [wilson(round(a * n), n) for a, n in zip(out["accuracy"], out["n"], strict=True)]
    out["accuracy_lo"], out["accuracy_hi"] = [b[0] for b in bounds], [b[1] for b in bounds]
    return out[GROUP_COLUMNS].sort_values(["n", "group"], ascending=[False, True], ignore_index=True)


def group_loss_problem(
    y_true: Sequence[int],
    champion: Sequence[int],
    challenger: Sequence[int],
    groups: Sequence[str],
    max_loss: float | None,
    min_support: int,
) -> tuple[str | None, dict]:
    """``(reason, numbers)``: the reason to keep the champion when the challenger's balanced accuracy
    on a rated group of at least ``min_support`` images is more than ``max_loss`` below the
    champion's (None when none is, or the rule is off); the per-group figures of both either way."""
    old, new = group_metrics(y_true, champion, groups), group_metrics(y_true, challenger, groups)
    both = old.merge(new, on=["group", "n"], suffixes=("_champion", "_challenger"))
    both["loss"] = both["balanced_accuracy_champion"] - both["balanced_accuracy_challenger"]
    numbers = {
        "max_group_loss": max_loss,
        "min_group_support": min_support,
        "groups": both[["group", "n", "balanced_accuracy_champion", "balanced_accuracy_challenger", "loss"]].to_dict(
            orient="records"
        ),
        "challenger": new.to_dict(orient="records"),  # with accuracy and its Wilson interval per group
    }
    if max_loss is None:
        return None, numbers
    rated = both[~both["group"].isin(UNRATED) & (both["n"] >= min_support)]
    worse = rated[rated["loss"] > max_loss]
    if worse.empty:
        return None, numbers
    first = worse.sort_values("loss", ascending=False).iloc[0]
    return (
        f"skin-tone group {first['group']}: balanced accuracy {first['balanced_accuracy_champion']:.3f} -> "
        f"{first['balanced_accuracy_challenger']:.3f} on {int(first['n'])} images (loss {first['loss']:.3f} > "
        f"max_group_loss {max_loss}): champion kept",
        numbers,
    )
