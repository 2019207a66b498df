"""What the robustness ablation runs (typed, validated; the one place of these defaults, shared by
the flow, the CLI and prefect.yaml)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ml.config import ConfigModel

CorruptionKind = Literal["none", "salt_and_pepper", "gaussian_blur", "directional_blur"]


class Corruption(BaseModel):
    """One corruption of a split: impulse noise at ``level`` (share of pixels), or a blur."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: CorruptionKind = "none"
    level: float = Field(0.0, ge=0, le=1, description="Share of pixels hit by impulse noise.")
    kernel: int | None = Field(None, ge=1, description="Blur kernel side (odd); None: by image size.")
    sigma: float | None = Field(
        None, gt=0, description="Gaussian sigma (along the direction for directional blur); None: from the kernel."
    )

    @property
    def label(self) -> str:
        """What the table's status column says: ``clean``, ``noise 5%``, ``blur (isotropic 5x5)``."""
        if self.kind == "none" or (self.kind == "salt_and_pepper" and self.level == 0):
            return "clean"
        if self.kind == "salt_and_pepper":
            return f"noise {self.level * 100:g}%"
        side = f" {self.kernel}x{self.kernel}" if self.kernel else ""
        return f"blur ({'isotropic' if self.kind == 'gaussian_blur' else 'anisotropic 45°'}{side})"


class RobustnessConfig(ConfigModel):
    """The Table 5.8 ablation: noise levels, blur kernels, seeds and the training subset."""

    noise_levels: list[float] = Field(
        default_factory=lambda: [0.01, 0.02, 0.03, 0.04, 0.05, 0.15],
        min_length=1,
        description="Impulse-noise shares of pixels (thesis: 1-5% and 15%).",
    )
    black_share: float = Field(0.75, ge=0, le=1, description="Share of noisy pixels set black (thesis 3:1).")
    blur_kernel: int | None = Field(
        None, ge=1, description="Blur kernel side (odd); None: 3 up to 32 px, 5 up to 96 px, 7 above."
    )
    blur_sigma: float | None = Field(None, gt=0, description="Isotropic blur sigma; None: OpenCV's rule.")
    directional_angle: float = Field(45.0, description="Direction of the anisotropic blur (degrees).")
    directional_sigma_across: float = Field(0.5, gt=0, description="Soft-focus width across the direction (px).")
    blur: bool = Field(True, description="Also test the clean model on blurred test images.")
    train_per_class: int | None = Field(
        None, gt=0, description="Cap on training images per class (seeded subset; a bounded budget); None: all."
    )
    seed: int = Field(0, ge=0, description="Seed of the corruptions and of the training subset.")

    @field_validator("noise_levels")
    @classmethod
    def _levels(cls, v: list[float]) -> list[float]:
        if any(not 0 < x <= 1 for x in v) or len(set(v)) != len(v):
            raise ValueError(f"noise levels must be distinct shares in (0, 1], got {v}")
        return sorted(v)

    @model_validator(mode="after")
    def _odd(self) -> RobustnessConfig:
        if self.blur_kernel is not None and self.blur_kernel % 2 == 0:
            raise ValueError(f"blur_kernel must be odd, got {self.blur_kernel}")
        return self

    def noise(self, level: float) -> Corruption:
        return Corruption(kind="salt_and_pepper", level=level)

    def blurs(self) -> list[Corruption]:
        if not self.blur:
            return []
        return [
            Corruption(kind="gaussian_blur", kernel=self.blur_kernel, sigma=self.blur_sigma),
            Corruption(kind="directional_blur", kernel=self.blur_kernel),
        ]
