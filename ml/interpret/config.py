"""What the interpret flow runs (typed, validated; the one place of these defaults, shared by the
flow, the CLI and prefect.yaml)."""

from __future__ import annotations

from pydantic import Field

from ml.config import ConfigModel


class InterpretConfig(ConfigModel):
    """Repeated fits for the confused pairs, then galleries, Grad-CAM, guided backpropagation and
    the background test on the first fit's model."""

    seeds: int = Field(3, ge=1, description="Fits with seeds seed..seed+K-1 (confused pairs mean +/- std).")
    top_pairs: int = Field(3, ge=1, description="Most confused pairs that get a gallery.")
    per_pair: int = Field(4, ge=1, description="Misclassified images shown per pair.")
    guided_backprop: bool = Field(True, description="Add a guided-backpropagation column to the galleries.")
    min_cam_side: int = Field(
        4,
        ge=1,
        description="Grad-CAM's layer: the deepest whose map has at least this "
        "many px per side at the input size (ResNet layer4 at >= 128 px).",
    )
    confidence: float = Field(
        0.7, gt=0, lt=1, description="Background test: images predicted correctly with at least this probability."
    )
    patch_frac: float = Field(
        1 / 3,
        gt=0,
        le=1,
        description="Background test: side of the black centre patch as "
        "a share of the image side (thesis: about a third).",
    )
    background_examples: int = Field(8, ge=0, description="Before/after pairs shown in the background PNG.")
    train_per_class: int | None = Field(
        None, gt=0, description="Cap on training images per class (seeded subset; a bounded budget); None: all."
    )
