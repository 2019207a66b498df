"""What a monitor run checks (typed; the one place of these defaults, shared by the flow, the
CLI and prefect.yaml)."""

from __future__ import annotations

from pydantic import Field

from ml.config import ConfigModel

DEFAULT_MODEL_URI = "models:/skin-lesion-classifier@champion"
APPRISE_ENV = "SKINFLOW_DRIFT_APPRISE_URL"


class MonitorConfig(ConfigModel):
    """A batch, the model and reference it is compared with, and where the report goes."""

    batch: str = Field(..., description="Batch: ImageFolder (SD-198 layout), unlabelled folder, CSV or s3:// prefix.")
    class_map: str | None = Field(None, description="Class map of the batch's folders (e.g. sd198_to_10).")
    model_uri: str = Field(
        DEFAULT_MODEL_URI, description="Model to monitor (models:/name@alias, models:/name/N, runs:/...)."
    )
    reference: str | None = Field(
        None, description="Reference dataset source; default: the model's recorded training images."
    )
    reference_version: str | None = Field(None, description="Required manifest version of --reference.")
    reference_class_map: str | None = Field(None, description="Class map of the reference dataset.")
    max_reference: int = Field(1000, ge=10, description="Reference images used at most (a seeded sample).")
    policy: str | None = Field(None, description="Drift policy YAML (default policies/drift.yaml).")
    out_dir: str = Field("outputs/monitor", description="Where the report, summary and alert go.")
    workspace: str | None = Field(
        None, description="Evidently workspace folder for the snapshots (default: <data root>/evidently)."
    )
    apprise_secret: str | None = Field(
        None, description=f"Prefect Secret block holding an Apprise URL (else the {APPRISE_ENV} environment variable)."
    )
    allow_outside_root: bool = Field(False, description="Read CSV paths outside the CSV's folder.")
    seed: int = Field(0, ge=0, description="Seed of the reference sample, PCA and bootstrap.")
