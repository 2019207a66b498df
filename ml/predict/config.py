"""What a prediction run reads, with which model, and where the table goes (the one place of these defaults)."""

from __future__ import annotations

from pydantic import Field

from ml.config import ConfigModel


class PredictConfig(ConfigModel):
    """New images in, one row per file out."""

    source: str | None = Field(None, description="Images: a folder, a CSV with a 'path' column, or an s3:// prefix.")
    model_uri: str | None = Field(
        None,
        description="Model (models:/name@alias, models:/name/N, runs:/...); default: the registered model's champion.",
    )
    out: str = Field("outputs/predict/predictions.csv", description="The table: .csv or .parquet.")
    top_k: int = Field(3, ge=1, description="Labels listed per image, most probable first.")
    chunk: int = Field(64, ge=1, description="Images per prediction call (progress is shown per chunk).")
    allow_outside_root: bool = Field(False, description="Read CSV paths outside the CSV's folder.")
    explain: str | None = Field(
        None, description="Folder for one Grad-CAM overlay (PNG) per predicted image: where the model looked."
    )

    def model(self) -> str:
        """``model_uri``, else the champion of the settings' registered model."""
        from ml.monitor.config import champion_uri

        return self.model_uri or champion_uri()
