"""Which data a flow uses and how it is split and resized (typed, validated; the one place of
these defaults, shared by the flows, the CLI and prefect.yaml)."""

from __future__ import annotations

from pydantic import Field, model_validator

from ml.config import ConfigModel


class DataConfig(ConfigModel):
    """A dataset version: its source, class map, split fractions and training resolution."""

    source: str = Field("data/demo/synth", description="ImageFolder dir, CSV manifest, or s3:// prefix.")
    class_map: str | None = Field(None, description="Class-map YAML path or shipped name (sd198_to_10).")
    size: int = Field(64, ge=16, description="Training resolution (px, square).")
    val_frac: float = Field(1 / 6, ge=0, lt=1, description="Validation share (thesis: 5:1 train/validation).")
    test_frac: float = Field(0.2, ge=0, lt=1, description="Held-out test share (kept when the source ships one).")
    seed: int = Field(0, ge=0, description="Split seed.")
    decisions: str | None = Field(
        None,
        description="A label-review decisions CSV (skinflow label-issues): its relabels and drops make a new "
        "dataset version; originals are untouched.",
    )
    allow_outside_root: bool = Field(
        False, description="Read CSV paths and symlinks that point outside the dataset's folder (refused by default)."
    )

    @model_validator(mode="after")
    def _fractions(self) -> DataConfig:
        if self.val_frac + self.test_frac >= 1:
            raise ValueError(f"val_frac + test_frac must stay below 1, got {self.val_frac} + {self.test_frac}")
        return self
