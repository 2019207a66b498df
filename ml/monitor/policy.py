"""The drift policy (``policies/drift.yaml``): thresholds of :func:`ml.monitor.drift.decide`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import yaml

DEFAULT_POLICY = Path(__file__).resolve().parents[2] / "policies" / "drift.yaml"


@dataclass(frozen=True)
class DriftPolicy:
    """See the comments in ``policies/drift.yaml`` for what each threshold guards."""

    drifted_share: float = 0.5
    family_alpha: float = 0.01
    tested_components: int = 6
    pca_components: int = 16
    embedding_model_auc: float = 0.55
    embedding_mmd: float = 0.015
    label_alpha: float = 0.01
    prior_change: float = 0.1
    prior_level: float = 0.99
    n_boot: int = 400
    cooldown_s: int = 3600
    min_batch: int = 20

    @classmethod
    def load(cls, path: str | Path | None = None) -> DriftPolicy:
        """The policy at ``path`` (default ``policies/drift.yaml``); unknown keys are refused."""
        path = Path(path) if path else DEFAULT_POLICY
        data = yaml.safe_load(path.read_text()) or {}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown drift policy key(s) {unknown}; known: {sorted(known)}")
        policy = cls(**data)
        if not 0 < policy.drifted_share <= 1 or not 0 < policy.family_alpha < 1 or not 0 < policy.label_alpha < 1:
            raise ValueError(f"{path}: drifted_share must be in (0, 1], family_alpha and label_alpha in (0, 1)")
        if policy.tested_components > policy.pca_components:
            raise ValueError(f"{path}: tested_components must not exceed pca_components")
        return policy

    def to_dict(self) -> dict:
        return asdict(self)
