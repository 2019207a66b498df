"""What defines a training run and a sweep: typed, validated configuration (pydantic).

These models are the flows' parameters (Prefect validates them and shows them as forms), the
CLI builds them from its options, and ``prefect.yaml`` gives them as nested parameters: each
default lives here and nowhere else.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field, model_validator

from ml.config import ConfigModel, runtime

ScheduleName = Literal["sgd", "adam", "sgdr", "sgdr_dlr", "sgdr_dlr_clm", "one_cycle"]
ArchName = Literal[
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "densenet121",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
]
SCHEDULES: tuple[str, ...] = get_args(ScheduleName)
# The thesis's five variants (ch. 3): what sweeps and the thesis benchmarks compare by default.
# one_cycle is fastai's fit_one_cycle (warm-up then cosine, AdamW), the baseline a user would
# otherwise pick, offered beside them (ml/train/schedules.py).
VARIANTS: tuple[str, ...] = SCHEDULES[:5]
ARCHS: tuple[str, ...] = get_args(ArchName)
# Families share a head name, a layer-group layout and the input normalisation of their ImageNet weights.
ARCH_FAMILIES = ("resnet", "densenet", "efficientnet_lite")  # resnet: ResNet and ResNeXt
EPOCH_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc_macro")
MONITORS = ("train_loss", "val_loss") + tuple(f"val_{m}" for m in EPOCH_METRICS)
Monitor = Literal["train_loss", "val_loss", "val_accuracy", "val_balanced_accuracy", "val_macro_f1", "val_auroc_macro"]
assert get_args(Monitor) == MONITORS


def arch_family(arch: str) -> str:
    """The family of `arch` (one of ``ARCH_FAMILIES``)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHS}")
    if arch.startswith(("resnet", "resnext")):
        return "resnet"
    return "densenet" if arch.startswith("densenet") else "efficientnet_lite"


class TrainConfig(ConfigModel):
    """Everything that defines a training run (flattened into MLflow params by the tasks). The
    runtime-only fields (:func:`ml.config.runtime`: device, workers, checkpointing, progress) may
    differ between an interrupted run and its resumption and are no part of its identity."""

    arch: ArchName = Field("resnet18", description="Architecture (torchvision, or EfficientNet-Lite).")
    weights: str = Field("none", description="none | imagenet | a path | s3://... | models:/... | runs:/...")
    schedule: ScheduleName = Field("sgdr_dlr_clm", description="Optimiser and LR schedule variant.")
    lr: float | None = Field(None, gt=0, description="Peak (head) LR; None: chosen by an LR range test.")
    lr_min: float | None = Field(None, ge=0, description="Floor of the cosine schedules (default lr / 100).")
    epochs: int = Field(
        7,
        gt=0,
        description="Epochs; 7 = 1+2+4 completes three sgdr_dlr_clm cycles. A budget "
        "that ends inside a cycle trains to the last whole one (fit warns).",
    )
    batch_size: int = Field(64, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    amp: bool = Field(
        False,
        description="Mixed precision where it helps on this machine: CUDA, or a CPU with "
        "native bf16 (avx512_bf16/amx_bf16); elsewhere fp32.",
    )
    force_amp: bool = Field(
        False,
        description="With amp: bf16 autocast even on a CPU without native bf16 (can be many times slower than fp32).",
    )
    channels_last: bool = Field(
        True,
        description="Train and predict in channels_last memory format: on a 2-core AMD EPYC a Lite0 step at 128 px "
        "ran 1.8x faster than in the default format in fp32, a ResNet-18 step 1.1x (fp32) to 1.2x (bf16) "
        "(make bench-step).",
    )
    snapshots: int = Field(3, ge=0, description="Snapshot-ensemble size (cycle ends kept); 0 = off.")
    early_stopping_patience: int | None = Field(None, gt=0)
    monitor: Monitor = "val_loss"
    weighted_sampler: bool = Field(False, description="Inverse class-frequency sampling.")
    tta: bool = Field(False, description="Test-time augmentation at evaluation.")
    seed: int = Field(0, ge=0)
    device: str = runtime("auto", description="auto (CUDA when present) | cpu | cuda | cuda:N")
    num_workers: int = runtime(0, ge=0)
    checkpoint_dir: str | None = runtime(
        None,
        description=(
            "Folder of the run's checkpoint (last.pt): the same command run again resumes from it and ends as an "
            "uninterrupted run would; its MLflow run supersedes the interrupted one."
        ),
    )
    # 0: a checkpoint after every epoch; t > 0: after an epoch only once t seconds have passed
    # since the last one (and always after the final epoch), like Lightning's train_time_interval
    checkpoint_interval_s: float = runtime(0.0, ge=0)
    progress: bool = runtime(True)


class SweepConfig(ConfigModel):
    """A Ray Tune sweep: the grid of (arch, schedule, AMP) cells, LR samples per cell from the
    range test's bracket, and each trial's budget and resources."""

    archs: list[ArchName] = Field(default_factory=lambda: ["resnet18"], min_length=1)
    schedules: list[ScheduleName] = Field(default_factory=lambda: list(VARIANTS), min_length=1)
    amp: list[bool] = Field(default_factory=lambda: [False, True], min_length=1)
    num_samples: int = Field(1, gt=0, description="LR samples per cell, log-uniform in the bracket.")
    epochs: int = Field(3, gt=0, description="Epochs per trial.")
    gpus_per_trial: float | None = Field(None, ge=0, description="Default: 1 when CUDA is present, else 0.")
    cpus_per_trial: int = Field(1, gt=0)
    max_failures: int = Field(1, ge=0, description="Retries of a failed trial (its Ray node died) from its checkpoint.")
    checkpoint_interval_s: float = Field(
        30.0, ge=0, description="Seconds between a trial's checkpoints; 0 = every epoch."
    )
    name: str | None = Field(None, description="Tune experiment name: an interrupted one's resumes it.")
    trial_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources each trial asks for besides CPUs and GPUs, e.g. "
        "{'worker_node': 1} to place trials on nodes started with that resource.",
    )

    @model_validator(mode="after")
    def _distinct(self) -> SweepConfig:
        for field in ("archs", "schedules", "amp"):
            values = getattr(self, field)
            if len(set(values)) != len(values):
                raise ValueError(f"{field} lists a value twice: {values}")
        reserved = sorted({"cpu", "gpu", "CPU", "GPU"} & set(self.trial_resources))
        if reserved or any(v <= 0 for v in self.trial_resources.values()):
            raise ValueError(
                f"trial_resources are positive amounts of custom resources (CPUs and GPUs: "
                f"cpus_per_trial, gpus_per_trial), got {self.trial_resources}"
            )
        return self


class LRFindConfig(ConfigModel):
    """Smith's LR range test: an exponential ramp from ``start_lr`` to ``end_lr``."""

    num_iter: int = Field(100, gt=1, description="Iterations of the ramp.")
    start_lr: float = Field(1e-7, gt=0)
    end_lr: float = Field(10.0, gt=0)
    reuse: bool = runtime(
        True,
        description="Reuse the result of an earlier range test on the same training images, model, "
        "optimiser, batch, precision and seed (stored with the run's results); off: measure again "
        "and store that.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> LRFindConfig:
        if self.end_lr <= self.start_lr:
            raise ValueError(f"end_lr ({self.end_lr}) must exceed start_lr ({self.start_lr})")
        return self
