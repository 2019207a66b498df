"""What a monitor run checks (typed; the one place of these defaults, shared by the flow, the
CLI and prefect.yaml)."""

from __future__ import annotations

from pydantic import Field

from ml.config import ConfigModel

CHAMPION = "champion"  # the alias the promotion gate moves
APPRISE_ENV = "SKINFLOW_DRIFT_APPRISE_URL"


def champion_uri() -> str:
    """``models:/<registered_model>@champion``: the model monitored and predicted with by default."""
    from ml.settings import get_settings

    return f"models:/{get_settings().registered_model}@{CHAMPION}"


class MonitorConfig(ConfigModel):
    """A batch, the model and reference it is compared with, and where the report goes."""

    batch: str | None = Field(
        None,
        description="Batch: ImageFolder (SD-198 layout), unlabelled folder, CSV or s3:// prefix "
        "(required: given, or monitor.batch in the project file).",
    )
    class_map: str | None = Field(None, description="Class map of the batch's folders (e.g. sd198_to_10).")
    model_uri: str | None = Field(
        None,
        description="Model to monitor (models:/name@alias, models:/name/N, runs:/...); "
        "default: the registered model's champion (models:/<registered_model>@champion).",
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

    def monitored_uri(self) -> str:
        """``model_uri``, else the champion of the settings' registered model."""
        return self.model_uri or champion_uri()
