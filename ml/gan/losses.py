"""WGAN-GP (Gulrajani et al. 2017) with ProGAN's drift term (Karras et al. 2018, appendix A.1).

Critic:    L_D = E[D(fake)] - E[D(real)] + lambda * E[(||grad_xhat D(xhat)||_2 - 1)^2] + eps_drift * E[D(real)^2]
           with xhat = u * real + (1 - u) * fake, u ~ U[0, 1] per image.
Generator: L_G = -E[D(fake)].
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Critic = Callable[[torch.Tensor], torch.Tensor]


def interpolate(real: torch.Tensor, fake: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``u * real + (1 - u) * fake`` with one ``u`` per image (shape (N,) or (N, 1, 1, 1))."""
    u = u.reshape(-1, *([1] * (real.ndim - 1))).to(real.dtype)
    return u * real + (1 - u) * fake


def gradient_penalty(
    critic: Critic, real: torch.Tensor, fake: torch.Tensor, u: torch.Tensor, grad_scale: float = 1.0
) -> torch.Tensor:
    """``E[(||grad D(xhat)||_2 - 1)^2]`` at the interpolates; differentiable (create_graph).

    ``grad_scale``: the GradScaler's scale when the critic's output is scaled for fp16 (the
    gradient is computed of the scaled sum, then divided back, as in PyTorch's AMP notes)."""
    xhat = interpolate(real.detach(), fake.detach(), u).requires_grad_(True)
    scores = critic(xhat)
    (grad,) = torch.autograd.grad(scores.float().sum() * grad_scale, xhat, create_graph=True)
    grad = grad.float() / grad_scale
    norms = grad.flatten(1).norm(2, dim=1)
    return (norms - 1).pow(2).mean()


def critic_loss(
    real_scores: torch.Tensor, fake_scores: torch.Tensor, penalty: torch.Tensor, gp_weight: float, drift: float
) -> dict[str, torch.Tensor]:
    """The critic's loss and its parts: the Wasserstein estimate, the penalty, the drift."""
    real_scores, fake_scores = real_scores.float(), fake_scores.float()
    wasserstein = real_scores.mean() - fake_scores.mean()
    drift_term = real_scores.pow(2).mean()
    loss = -wasserstein + gp_weight * penalty + drift * drift_term
    return {"loss": loss, "wasserstein": wasserstein.detach(), "gp": penalty.detach(), "drift": drift_term.detach()}


def generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    return -fake_scores.float().mean()
