"""How label issues are looked for (typed; the one place of these defaults, shared by the flow and the CLI)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ml.config import ConfigModel


class LabelIssuesConfig(ConfigModel):
    """How label issues are looked for (the one place of these defaults)."""

    arch: Literal["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"] = Field(
        "efficientnet_lite0", description="Backbone with packaged ImageNet weights whose frozen features are probed."
    )
    folds: int = Field(5, ge=2, description="Cross-fitting folds: each image is scored by a probe fitted without it.")
    c: float = Field(
        0.1,
        gt=0,
        description="Inverse L2 strength of the logistic probes: 0.1 found more planted flips than 0.01 and 0.03 "
        "at the same precision on the synthetic set (bench/RESULTS.md, label-issues).",
    )
    neighbours: int = Field(10, ge=1, description="k of the outlier rule's k nearest images.")
    seed: int = Field(0, ge=0, description="Fold assignment seed.")
    min_probe_accuracy: float = Field(
        0.8,
        ge=0,
        le=1,
        description="Below this out-of-sample accuracy of the probes, the run says that most 'likely "
        "mislabelled' flags reflect what frozen features cannot tell apart rather than wrong labels "
        "(isic9: 0.505 at 128 px, 0.52 at 224 px).",
    )
    out_dir: str = Field("outputs/label_issues", description="Folder of label_issues.csv, review.html, decisions.csv.")
