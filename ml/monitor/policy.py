"""The drift policy (``policies/drift.yaml``): thresholds of :func:`ml.monitor.drift.decide`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ml.policies import build_policy, shipped_path

DEFAULT_POLICY = shipped_path("drift")  # the shipped file; DriftPolicy.load() reads the settings' policies_dir


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

    def __post_init__(self) -> None:
        if not 0 < self.drifted_share <= 1 or not 0 < self.family_alpha < 1 or not 0 < self.label_alpha < 1:
            raise ValueError("drifted_share must be in (0, 1], family_alpha and label_alpha in (0, 1)")
        if self.tested_components > self.pca_components:
            raise ValueError("tested_components must not exceed pca_components")

    @classmethod
    def load(cls, path: str | Path | None = None) -> DriftPolicy:
        """The policy at ``path`` (default: ``drift.yaml`` in the settings' ``policies_dir``): every
        field, no other key (:func:`ml.policies.load_policy`; mistakes are ``PolicyError``)."""
        return build_policy("drift", path, cls, [f.name for f in fields(cls)])

    def to_dict(self) -> dict:
        return asdict(self)
