"""ProGAN against the paper: growth and fade-in, equalised LR, pixel norm, minibatch stddev,
WGAN-GP with drift (hand-computed cases), the stage schedule, per-stage resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ml.gan.config import ProGANConfig
from ml.gan.losses import critic_loss, generator_loss, gradient_penalty, interpolate
from ml.gan.progan import (
    Discriminator,
    EqualizedConv2d,
    EqualizedLinear,
    Generator,
    MinibatchStdDev,
    PixelNorm,
    num_stages,
    stage_channels,
)
from ml.gan.train import GanCallback, stage_plan, train_progan

TINY = dict(latent_dim=8, max_channels=8, min_channels=4)


def _tiny_cfg(tmp_path=None, **kw) -> ProGANConfig:
    base = dict(resolution=16, fade_iters=6, stable_iters=4, batch_size=4, amp=False, progress=False, **TINY)
    if tmp_path is not None:
        base["checkpoint_dir"] = str(tmp_path)
    return ProGANConfig(**{**base, **kw})


def test_networks_grow_through_every_resolution_with_the_right_shapes() -> None:
    torch.manual_seed(0)
    G = Generator(32, 8, 8, 4)
    D = Discriminator(32, 8, 4, mbstd_group=2)
    assert num_stages(32) == G.stages == D.stages == 4
    assert stage_channels(32, 8, 4) == [8, 8, 8, 4]
    z = torch.randn(4, 8)
    for stage, res in enumerate((4, 8, 16, 32)):
        for alpha in (0.0, 0.5, 1.0):
            x = G(z, stage, alpha)
            assert x.shape == (4, 3, res, res)
            assert D(x, stage, alpha).shape == (4, 1)


def test_fade_in_at_alpha_0_is_the_previous_stage_and_mixes_linearly() -> None:
    torch.manual_seed(0)
    G, D = Generator(16, 8, 8, 4), Discriminator(16, 8, 4)
    z = torch.randn(4, 8)
    with torch.no_grad():
        for stage in (1, 2):
            old = F.interpolate(G(z, stage - 1, 1.0), scale_factor=2, mode="nearest")
            new = G(z, stage, 1.0)
            torch.testing.assert_close(G(z, stage, 0.0), old)
            torch.testing.assert_close(G(z, stage, 0.3), 0.3 * new + 0.7 * old)
            x = torch.randn(4, 3, 4 * 2**stage, 4 * 2**stage)
            # D's old path reads the average-pooled image through the previous stage's fromRGB
            torch.testing.assert_close(D(x, stage, 0.0), D(F.avg_pool2d(x, 2), stage - 1, 1.0))


def test_fade_in_alpha_goes_from_0_to_1_in_the_schedule_and_in_training() -> None:
    plan = stage_plan(ProGANConfig(resolution=32, fade_iters=10, stable_iters=5, last_stage_iters=7), 32)
    assert [(s.resolution, s.fade_iters, s.stable_iters) for s in plan] == [
        (4, 0, 15),
        (8, 10, 5),
        (16, 10, 5),
        (32, 10, 7),
    ]
    assert all(plan[0].alpha(t) == 1.0 for t in range(plan[0].iters))
    alphas = [plan[1].alpha(t) for t in range(plan[1].iters)]
    assert alphas[0] == 0.0 and alphas[5] == 0.5 and alphas[10:] == [1.0] * 5
    assert all(b >= a for a, b in zip(alphas, alphas[1:]))
    # the loop's logged alphas within a faded stage rise to 1
    import ml.gan.train as gan_train

    images = np.random.default_rng(0).integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    old, gan_train.LOG_EVERY = gan_train.LOG_EVERY, 2
    try:
        result = train_progan(images, _tiny_cfg(resolution=8, fade_iters=8, stable_iters=2))
    finally:
        gan_train.LOG_EVERY = old
    logged = [row["alpha"] for row in result.history if row["stage"] == 1]
    assert logged[0] < 0.5 and logged[-1] == 1.0 and logged == sorted(logged)
    assert result.completed and len(result.sample(3, 0)) == 3 and result.sample(3, 0).shape[1:] == (8, 8, 3)


def test_equalised_lr_scales_match_he_constant() -> None:
    conv = EqualizedConv2d(8, 4, 3, padding=1)
    assert conv.scale == pytest.approx(math.sqrt(2) / math.sqrt(8 * 3 * 3))
    lin = EqualizedLinear(50, 7, gain=1.0)
    assert lin.scale == pytest.approx(1 / math.sqrt(50))
    big = EqualizedConv2d(64, 64, 3)
    assert float(big.weight.detach().std()) == pytest.approx(1.0, abs=0.02)  # stored weights ~ N(0, 1)
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight * conv.scale, conv.bias, padding=1))
    G = Generator(16, 8, 8, 4)
    for m in G.modules():  # every layer of the generator: gain / sqrt(fan_in)
        if isinstance(m, EqualizedConv2d):
            fan_in = m.weight[0].numel()
            gain = 1.0 if m.weight.shape[0] == 3 else math.sqrt(2)  # toRGB: linear
            assert m.scale == pytest.approx(gain / math.sqrt(fan_in))


def test_pixel_norm_and_minibatch_stddev_by_hand() -> None:
    x = torch.randn(3, 5, 2, 2) * 7
    y = PixelNorm()(x)
    torch.testing.assert_close(y.pow(2).mean(dim=1), torch.ones(3, 2, 2), atol=1e-5, rtol=1e-5)
    x = torch.arange(4 * 2 * 1 * 1, dtype=torch.float32).reshape(4, 2, 1, 1)
    out = MinibatchStdDev(group=2)(x)
    assert out.shape == (4, 3, 1, 1)
    # groups pair image m with m + 2: {0, 2} and {1, 3}; std per feature, averaged
    a = x.numpy()[:, :, 0, 0]
    std_m0 = np.sqrt(((a[[0, 2]] - a[[0, 2]].mean(0)) ** 2).mean(0) + 1e-8).mean()
    std_m1 = np.sqrt(((a[[1, 3]] - a[[1, 3]].mean(0)) ** 2).mean(0) + 1e-8).mean()
    np.testing.assert_allclose(out[:, 2, 0, 0].numpy(), [std_m0, std_m1, std_m0, std_m1], rtol=1e-6)


def test_gradient_penalty_matches_hand_computed_cases() -> None:
    # linear critic D(x) = <w, x>: the gradient is w everywhere, the penalty (||w|| - 1)^2
    w = torch.tensor([[[[1.0, 2.0], [2.0, 0.0]]]])  # ||w|| = 3
    real, fake = torch.randn(5, 1, 2, 2), torch.randn(5, 1, 2, 2)
    gp = gradient_penalty(lambda x: (x * w).flatten(1).sum(1, keepdim=True), real, fake, torch.rand(5))
    assert float(gp) == pytest.approx(4.0)
    # quadratic critic D(x) = ||x||^2 / 2: the gradient is xhat; real (3, 4), fake 0, u = 0.5 -> ||xhat|| = 2.5
    real, fake = torch.tensor([[3.0, 4.0], [0.0, 2.0]]), torch.zeros(2, 2)
    u = torch.tensor([0.5, 0.25])
    torch.testing.assert_close(interpolate(real, fake, u), torch.tensor([[1.5, 2.0], [0.0, 0.5]]))
    gp = gradient_penalty(lambda x: 0.5 * x.pow(2).sum(1), real, fake, u)
    assert float(gp) == pytest.approx(((2.5 - 1) ** 2 + (0.5 - 1) ** 2) / 2)  # (2.25 + 0.25) / 2
    # the penalty is differentiable (the critic's parameters get its gradient)
    lin = torch.nn.Linear(2, 1)
    gradient_penalty(lin, real, fake, u).backward()
    assert lin.weight.grad is not None and float(lin.weight.grad.abs().sum()) > 0
    # critic loss: E[D(f)] - E[D(r)] + lambda * gp + drift * E[D(r)^2]
    parts = critic_loss(torch.tensor([1.0, 3.0]), torch.tensor([0.0, -2.0]), torch.tensor(0.5), 10.0, 0.001)
    assert float(parts["loss"]) == pytest.approx((-1.0 - 2.0) + 10 * 0.5 + 0.001 * 5.0)
    assert float(parts["wasserstein"]) == pytest.approx(3.0)
    assert float(generator_loss(torch.tensor([0.0, -2.0]))) == pytest.approx(1.0)


class _StopAfterStage(GanCallback):
    def __init__(self, stage: int):
        self.stage = stage

    def on_stage_end(self, stage, grid, state) -> None:
        state.stop_requested = stage.index == self.stage


def test_resume_from_a_stage_checkpoint_is_bit_identical(tmp_path) -> None:
    images = np.random.default_rng(1).integers(0, 256, (10, 16, 16, 3), dtype=np.uint8)
    full = train_progan(images, _tiny_cfg(tmp_path / "full"), sample_dir=tmp_path / "grids", grid_images=4)
    assert sorted(p.name for p in (tmp_path / "full").glob("stage_*.pt")) == ["stage_0.pt", "stage_1.pt", "stage_2.pt"]
    assert [p.split("/")[-1] for p in full.grids] == [
        "samples_stage0_4px.png",
        "samples_stage1_8px.png",
        "samples_stage2_16px.png",
    ]
    cut = train_progan(images, _tiny_cfg(tmp_path / "cut"), callbacks=[_StopAfterStage(1)])
    assert not cut.completed and sorted(p.name for p in (tmp_path / "cut").glob("*.pt")) == ["stage_0.pt", "stage_1.pt"]
    resumed = train_progan(images, _tiny_cfg(tmp_path / "cut", progress=True))  # progress may differ
    assert resumed.completed and resumed.resumed_from_stage == 2
    assert resumed.history == full.history
    for a, b in (
        (full.generator, resumed.generator),
        (full.discriminator, resumed.discriminator),
        (full.ema, resumed.ema),
    ):
        for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(va, vb), k
    np.testing.assert_array_equal(full.sample(4, 7), resumed.sample(4, 7))
    # a checkpoint of another configuration is refused, not silently continued
    with pytest.raises(ValueError, match="another config"):
        train_progan(images, _tiny_cfg(tmp_path / "cut", lr=5e-4))


def test_bf16_autocast_training_runs_when_chosen(tmp_path) -> None:
    """With amp the precision comes from choose_precision (bf16 only on a CPU with native bf16)."""
    from ml.train.precision import choose_precision

    images = np.random.default_rng(2).integers(0, 256, (8, 8, 8, 3), dtype=np.uint8)
    result = train_progan(images, _tiny_cfg(resolution=8, amp=True, fade_iters=2, stable_iters=2, device="cpu"))
    assert result.precision == choose_precision(torch.device("cpu"), True)
    assert all(math.isfinite(r["d_loss"]) for r in result.history)
