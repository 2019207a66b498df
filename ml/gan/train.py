"""The ProGAN training procedure: stages 4x4 -> target, fade-in, WGAN-GP, EMA generator.

Per stage ``s`` (resolution ``4 * 2**s``): ``fade_iters`` iterations with alpha rising linearly
from 0 to 1 (stage 0 has nothing to fade in), then ``stable_iters`` at alpha 1. During a fade
the real images are blended the same way as the networks' outputs (the paper's "transition"
of the training images): ``alpha * x_s + (1 - alpha) * upsample(downsample(x_s))``.

One iteration = one critic step and one generator step (n_critic = 1, as in ProGAN), Adam with
``betas=(0, 0.99)`` for both networks over all their parameters from the start (layers not yet
in use get no gradient, so Adam leaves them alone).

The generator whose samples are used is an EMA of G's weights with
``beta_t = min(ema_beta, (1 + t) / (10 + t))``, t counted from the start of each stage: near 0
when a stage starts (the average restarts from the current weights), ``ema_beta`` soon after.

Shares the classifier loop's machinery (ml/train/checkpoint.py): seeding, RNG states that load
with ``weights_only``, atomic writes, resume refusing another config, the progress bar; and its
precision choice (ml/train/precision.py). A checkpoint is written at the end of every stage
(``stage_<s>.pt``); a run that finds one continues after the latest, and on a CPU the
resumed run is bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ml.eval.plots import save_image_grid
from ml.gan.config import ProGANConfig
from ml.gan.losses import critic_loss, generator_loss, gradient_penalty
from ml.gan.progan import Discriminator, Generator, num_stages, parameter_count, stage_resolution
from ml.train.checkpoint import (
    cpu_state,
    load_checkpoint,
    progress_bar,
    rng_state,
    save_atomic,
    seed_everything,
    set_rng_state,
)
from ml.train.precision import Precision, autocast, choose_precision, resolve_device

LOG_EVERY = 25  # iterations between history rows


@dataclass(frozen=True)
class Stage:
    index: int
    resolution: int
    fade_iters: int
    stable_iters: int

    @property
    def iters(self) -> int:
        return self.fade_iters + self.stable_iters

    def alpha(self, iteration: int) -> float:
        """Fade-in weight of the stage's new layers at its ``iteration`` (0-based): 0 at the
        first, rising linearly, 1 from ``fade_iters`` on (always 1 without a fade)."""
        if self.fade_iters == 0:
            return 1.0
        return min(1.0, iteration / self.fade_iters)


def stage_plan(cfg: ProGANConfig, resolution: int) -> list[Stage]:
    """The stages of a run to ``resolution``: stage 0 trains ``fade_iters + stable_iters`` at
    alpha 1; the last stage trains ``last_stage_iters`` (default ``stable_iters``) after its fade."""
    n = num_stages(resolution)
    plan = []
    for s in range(n):
        fade = 0 if s == 0 else cfg.fade_iters
        stable = cfg.fade_iters + cfg.stable_iters if s == 0 else cfg.stable_iters
        if s == n - 1 and s > 0 and cfg.last_stage_iters is not None:
            stable = cfg.last_stage_iters
        plan.append(Stage(s, stage_resolution(s), fade, stable))
    return plan


def images_to_tensor(images: np.ndarray, resolution: int) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1] at ``resolution`` (area resampling)."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N,H,W,3), got {images.dtype} {images.shape}")
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if x.shape[-1] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="area")
    return x


def tensor_to_images(x: torch.Tensor, resolution: int | None = None) -> np.ndarray:
    """float NCHW in [-1, 1] -> uint8 NHWC (nearest-neighbour upsampled to ``resolution``)."""
    x = x.detach().float().cpu()
    if resolution is not None and x.shape[-1] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="nearest")
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def real_at_stage(x: torch.Tensor, stage: Stage, alpha: float) -> torch.Tensor:
    """Training images at the stage's resolution, blended during the fade like the networks."""
    factor = x.shape[-1] // stage.resolution
    x = F.avg_pool2d(x, factor) if factor > 1 else x
    if stage.index > 0 and alpha < 1.0:
        x = alpha * x + (1 - alpha) * F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="nearest")
    return x


@dataclass
class GanState:
    """Live view handed to callbacks; a callback may set ``stop_requested`` (the run stops after
    the stage's checkpoint)."""

    cfg: ProGANConfig
    plan: list[Stage]
    generator: Generator
    discriminator: Discriminator
    ema: Generator
    stage: int = 0  # the stage being trained (== len(plan) when done)
    iteration: int = 0  # iterations over all stages
    history: list[dict[str, float]] = field(default_factory=list)
    grids: list[str] = field(default_factory=list)
    stop_requested: bool = False
    elapsed: float = 0.0
    resumed_from_stage: int | None = None


class GanCallback:
    def on_stage_end(self, stage: Stage, grid: str | None, state: GanState) -> None:
        """After a stage's checkpoint and sample grid (``grid``: the PNG's path or None)."""


@dataclass
class GanResult:
    ema: Generator  # the generator whose samples are used
    generator: Generator
    discriminator: Discriminator
    plan: list[Stage]
    history: list[dict[str, float]]
    grids: list[str]
    wall_seconds: float
    precision: Precision
    device: str
    resolution: int
    config: dict[str, Any]
    completed: bool
    resumed_from_stage: int | None

    def sample(self, n: int, seed: int, batch_size: int = 64) -> np.ndarray:
        """``n`` uint8 NHWC images from the EMA generator at full resolution."""
        return generate(self.ema, n, seed, torch.device(self.device), self.precision.dtype, batch_size)

    def summary(self) -> dict[str, Any]:
        return {
            "resolution": self.resolution,
            "stages": len(self.plan),
            "iterations": sum(s.iters for s in self.plan),
            "wall_seconds": round(self.wall_seconds, 2),
            "precision": self.precision.name,
            "precision_reason": self.precision.reason,
            "device": self.device,
            "generator_parameters": parameter_count(self.generator),
            "discriminator_parameters": parameter_count(self.discriminator),
            "resumed_from_stage": self.resumed_from_stage,
            "completed": self.completed,
        }


@torch.no_grad()
def generate(
    generator: Generator,
    n: int,
    seed: int,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    batch_size: int = 64,
    stage: int | None = None,
) -> np.ndarray:
    """``n`` uint8 NHWC images of ``generator`` at ``stage`` (default: its last), seeded."""
    stage = generator.stages - 1 if stage is None else stage
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, generator.latent_dim, generator=g)
    generator.eval()
    out = []
    for start in range(0, n, batch_size):
        with autocast(device, amp_dtype):
            out.append(tensor_to_images(generator(z[start : start + batch_size].to(device), stage)))
    return np.concatenate(out) if out else np.zeros((0, 4, 4, 3), np.uint8)


def _resume_key(cfg: ProGANConfig, resolution: int, n_images: int) -> dict[str, Any]:
    # runtime-only fields may change between a run and its resumption
    return {**cfg.identity(), "resolution": resolution, "n_images": n_images}


def _latest_checkpoint(folder: Path) -> Path | None:
    found = sorted(folder.glob("stage_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    return found[-1] if found else None


@dataclass
class _Run:
    state: GanState
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    rng: torch.Generator
    key: dict[str, Any]

    def checkpoint(self) -> dict[str, Any]:
        s = self.state
        return {
            "config": self.key,
            "stage": s.stage,
            "iteration": s.iteration,
            "history": s.history,
            "grids": s.grids,
            "elapsed": s.elapsed,
            "generator": cpu_state(s.generator),
            "discriminator": cpu_state(s.discriminator),
            "ema": cpu_state(s.ema),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state({"gan": self.rng}),
        }

    def restore(self, ckpt: dict[str, Any]) -> None:
        s = self.state
        s.generator.load_state_dict(ckpt["generator"])
        s.discriminator.load_state_dict(ckpt["discriminator"])
        s.ema.load_state_dict(ckpt["ema"])
        self.opt_g.load_state_dict(ckpt["opt_g"])
        self.opt_d.load_state_dict(ckpt["opt_d"])
        self.scaler.load_state_dict(ckpt["scaler"])
        s.stage, s.iteration, s.history = ckpt["stage"], ckpt["iteration"], ckpt["history"]
        s.grids, s.elapsed = ckpt["grids"], ckpt["elapsed"]
        s.resumed_from_stage = s.stage
        set_rng_state(ckpt["rng"], {"gan": self.rng})


def _set_requires_grad(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


def _critic_step(
    run: _Run, real: torch.Tensor, stage: Stage, alpha: float, device: torch.device, amp_dtype: torch.dtype | None
) -> dict[str, torch.Tensor]:
    s, cfg = run.state, run.state.cfg
    G, D = s.generator, s.discriminator
    z = torch.randn(len(real), cfg.latent_dim, generator=run.rng).to(device)
    u = torch.rand(len(real), generator=run.rng).to(device)
    _set_requires_grad(D, True)
    with torch.no_grad(), autocast(device, amp_dtype):
        fake = G(z, stage.index, alpha)
    with autocast(device, amp_dtype):
        real_scores = D(real, stage.index, alpha)
        fake_scores = D(fake, stage.index, alpha)
        scale = run.scaler.get_scale() if run.scaler.is_enabled() else 1.0
        penalty = gradient_penalty(lambda x: D(x, stage.index, alpha), real, fake.float(), u, grad_scale=scale)
        parts = critic_loss(real_scores, fake_scores, penalty, cfg.gp_weight, cfg.drift)
    run.opt_d.zero_grad(set_to_none=True)
    run.scaler.scale(parts["loss"]).backward()
    run.scaler.step(run.opt_d)
    run.scaler.update()
    return parts


def _generator_step(
    run: _Run, batch: int, stage: Stage, alpha: float, device: torch.device, amp_dtype: torch.dtype | None, t: int
) -> torch.Tensor:
    s, cfg = run.state, run.state.cfg
    G, D = s.generator, s.discriminator
    z = torch.randn(batch, cfg.latent_dim, generator=run.rng).to(device)
    _set_requires_grad(D, False)
    with autocast(device, amp_dtype):
        loss = generator_loss(D(G(z, stage.index, alpha), stage.index, alpha))
    run.opt_g.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.step(run.opt_g)
    run.scaler.update()
    beta = min(cfg.ema_beta, (1 + t) / (10 + t))
    with torch.no_grad():
        for pe, p in zip(s.ema.parameters(), G.parameters()):
            pe.lerp_(p, 1 - beta)
    return loss.detach()


def _train_stage(
    run: _Run, real: torch.Tensor, stage: Stage, device: torch.device, amp_dtype: torch.dtype | None
) -> None:
    s, cfg = run.state, run.state.cfg
    s.generator.train()
    s.discriminator.train()
    bar = progress_bar(stage.iters, f"stage {stage.index + 1}/{len(s.plan)} {stage.resolution}px", cfg.progress)
    started = time.perf_counter()
    acc: dict[str, Any] = {}
    for t in range(stage.iters):
        alpha = stage.alpha(t)
        idx = torch.randint(len(real), (min(cfg.batch_size, len(real)),), generator=run.rng)
        batch = real_at_stage(real[idx].to(device), stage, alpha)
        parts = _critic_step(run, batch, stage, alpha, device, amp_dtype)
        g_loss = _generator_step(run, len(batch), stage, alpha, device, amp_dtype, t)
        s.iteration += 1
        for k, v in (
            ("d_loss", parts["loss"].detach()),
            ("g_loss", g_loss),
            ("wasserstein", parts["wasserstein"]),
            ("gp", parts["gp"]),
        ):
            acc[k] = acc.get(k, 0.0) + v.float()  # summed on the device, read back every LOG_EVERY
        bar.update()
        if (t + 1) % LOG_EVERY == 0 or t + 1 == stage.iters:
            n = (t % LOG_EVERY) + 1
            row = {
                "iteration": s.iteration,
                "stage": stage.index,
                "resolution": stage.resolution,
                "alpha": alpha,
                **{k: float(v) / n for k, v in acc.items()},
            }
            if not all(np.isfinite(v) for v in row.values()):
                raise FloatingPointError(f"non-finite GAN loss at iteration {s.iteration}: {row}")
            s.history.append(row)
            acc = {}
            bar.set_postfix(d=f"{row['d_loss']:.3f}", g=f"{row['g_loss']:.3f}", alpha=f"{alpha:.2f}")
    bar.close()
    s.elapsed += time.perf_counter() - started


def _stage_grid(
    run: _Run,
    stage: Stage,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    sample_dir: Path | None,
    n: int,
    resolution: int,
) -> str | None:
    if sample_dir is None:
        return None
    imgs = generate(run.state.ema, n, run.state.cfg.seed + 10_000, device, amp_dtype, stage=stage.index)
    imgs = tensor_to_images(images_to_tensor(imgs, stage.resolution), resolution)  # nearest up to full size
    path = save_image_grid(imgs, None, Path(sample_dir) / f"samples_stage{stage.index}_{stage.resolution}px.png")
    return str(path)


def train_progan(
    images: np.ndarray,
    cfg: ProGANConfig = ProGANConfig(),
    sample_dir: str | Path | None = None,
    callbacks: Sequence[GanCallback] = (),
    grid_images: int = 32,
) -> GanResult:
    """Train a ProGAN on uint8 NHWC ``images`` (any size; resampled to the target resolution).

    ``sample_dir``: a grid of EMA samples per stage (``samples_stage<s>_<res>px.png``).
    ``cfg.checkpoint_dir``: a checkpoint per stage; a run finding one continues after it."""
    torch.set_flush_denormal(True)
    device = resolve_device(cfg.device)
    resolution = cfg.target_resolution(device.type == "cuda")
    precision = choose_precision(device, cfg.amp, cfg.force_amp)
    amp_dtype = precision.dtype
    seed_everything(cfg.seed)
    G = Generator(resolution, cfg.latent_dim, cfg.max_channels, cfg.min_channels).to(device)
    D = Discriminator(resolution, cfg.max_channels, cfg.min_channels, cfg.mbstd_group).to(device)
    ema = copy.deepcopy(G).eval()
    _set_requires_grad(ema, False)
    betas = (cfg.beta1, cfg.beta2)
    plan = stage_plan(cfg, resolution)
    run = _Run(
        state=GanState(cfg, plan, G, D, ema),
        opt_g=torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=betas, eps=1e-8),
        opt_d=torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=betas, eps=1e-8),
        scaler=torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16 and device.type == "cuda"),
        rng=torch.Generator().manual_seed(cfg.seed),
        key=_resume_key(cfg, resolution, len(images)),
    )
    folder = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        latest = _latest_checkpoint(folder)
        if latest is not None:
            run.restore(load_checkpoint(latest, run.key))
    real = images_to_tensor(images, resolution)
    s = run.state
    while s.stage < len(plan) and not s.stop_requested:
        stage = plan[s.stage]
        _train_stage(run, real, stage, device, amp_dtype)
        grid = _stage_grid(
            run, stage, device, amp_dtype, Path(sample_dir) if sample_dir else None, grid_images, resolution
        )
        if grid:
            s.grids.append(grid)
        s.stage += 1
        if folder is not None:
            save_atomic(run.checkpoint(), folder / f"stage_{stage.index}.pt")
        for cb in callbacks:
            cb.on_stage_end(stage, grid, s)
    ema.eval()
    return GanResult(
        ema=ema,
        generator=G,
        discriminator=D,
        plan=plan,
        history=s.history,
        grids=s.grids,
        wall_seconds=s.elapsed,
        precision=precision,
        device=str(device),
        resolution=resolution,
        config=cfg.to_dict(),
        completed=s.stage >= len(plan),
        resumed_from_stage=s.resumed_from_stage,
    )
