"""Optimisers and per-iteration learning-rate schedules for the thesis's training variants.

Variants (thesis ch. 3):

- ``sgd``: SGD with momentum, one LR for every group, step decay (x ``gamma`` every ``step_epochs``).
- ``adam``: Adam, one LR for every group, the same step decay.
- ``sgdr``: SGD with momentum, cosine annealing from ``lr`` to ``lr_min`` with a warm restart
  every epoch (torch's ``CosineAnnealingWarmRestarts`` with ``T_0`` counted in iterations).
- ``sgdr_dlr``: as ``sgdr`` with discriminative LRs, log-spaced from ``dlr_ratio * lr`` (first
  group) to ``lr`` (head). Every group anneals to its own floor ``base_g * lr_min / lr``.
  ``CosineAnnealingWarmRestarts`` has a single absolute ``eta_min`` shared by all groups, which
  would squash the low-LR groups' cosine; a multiplicative factor in ``LambdaLR``
  (:class:`WarmRestartCosine`) scales each group's whole curve instead.
- ``sgdr_dlr_clm``: as ``sgdr_dlr`` with cycle length multiplication (cycles of 1, 2, 4, ... epochs).
- ``one_cycle`` (not the thesis's: fastai's ``fit_one_cycle``, the baseline a user would pick):
  AdamW (betas 0.9/0.99, eps 1e-5, fastai's), one LR for every group, one cycle over the whole
  budget: cosine warm-up from ``lr / 25`` to ``lr`` in the first 25 % of the iterations, then
  cosine down to ``lr / 25e4``, with beta1 cycled 0.95 -> 0.85 -> 0.95 (torch's ``OneCycleLR``
  with fastai's defaults).

Every scheduler is stepped once per training iteration.

Cycles in epochs (:func:`cycle_end_epochs`): where a run of a variant may end whole. The step
decay of ``sgd``/``adam`` has no restarts, so each of its epochs counts as one; ``sgdr`` and
``sgdr_dlr`` restart every epoch; ``sgdr_dlr_clm``'s cycles end at epochs 1, 3, 7, 15, ... A
budget in between (:func:`whole_cycle_epochs`) would train a cycle it never finishes.

LR families (:data:`LR_FAMILIES`): variants that build the same optimiser over the same
relative group LRs share one LR range test, and so one LR bracket.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
from torch.optim.lr_scheduler import CosineAnnealingWarmRestarts, LambdaLR, LRScheduler, OneCycleLR, StepLR

from ml.train.config import SCHEDULES  # the one list of schedule names

DLR_VARIANTS = ("sgdr_dlr", "sgdr_dlr_clm")
STEP_DECAY_VARIANTS = ("sgd", "adam")
SINGLE_CYCLE = (*STEP_DECAY_VARIANTS, "one_cycle")  # no restarts: one snapshot, any budget is whole
ONE_CYCLE = {"pct_start": 0.25, "div_factor": 25.0, "final_div_factor": 1e4, "momentum": (0.95, 0.85)}  # fastai's
CLM_CYCLE_MULT = 2
# optimiser family -> the variants it trains: SGD with one LR for every group, SGD with
# discriminative LRs, Adam; a family's LR range test gives its variants' (head) LR bracket
LR_FAMILIES: dict[str, tuple[str, ...]] = {
    "sgd": ("sgd", "sgdr"),
    "sgd_dlr": DLR_VARIANTS,
    "adam": ("adam",),
    "adamw": ("one_cycle",),
}
assert sorted(v for vs in LR_FAMILIES.values() for v in vs) == sorted(SCHEDULES)


def lr_family(variant: str) -> str:
    """The :data:`LR_FAMILIES` key of ``variant``."""
    for family, variants in LR_FAMILIES.items():
        if variant in variants:
            return family
    raise ValueError(f"unknown schedule variant {variant!r}; allowed: {', '.join(SCHEDULES)}")


@dataclass
class Schedule:
    """An optimiser with its per-iteration scheduler and the variant's snapshot points."""

    optimizer: torch.optim.Optimizer
    scheduler: LRScheduler
    variant: str
    cycle_end_iters: list[int]

    def lrs(self) -> list[float]:
        """Current learning rate of each parameter group."""
        return [float(g["lr"]) for g in self.optimizer.param_groups]


class WarmRestartCosine:
    """Multiplicative LR factor of SGDR: cosine from 1 to ``floor`` with warm restarts.

    After ``step`` iterations inside a cycle of ``T_i`` iterations (``t_cur`` iterations into it)
    the factor is ``floor + (1 - floor) * (1 + cos(pi * t_cur / T_i)) / 2``; cycle ``i`` lasts
    ``t0 * t_mult**i`` iterations. A callable object (not a lambda) so that ``LambdaLR`` saves it
    in its ``state_dict``.
    """

    def __init__(self, t0: int, t_mult: int = 1, floor: float = 0.01) -> None:
        if t0 < 1 or t_mult < 1:
            raise ValueError(f"t0 and t_mult must be >= 1, got t0={t0}, t_mult={t_mult}")
        if not 0.0 <= floor <= 1.0:
            raise ValueError(f"floor must be in [0, 1], got {floor}")
        self.t0 = t0
        self.t_mult = t_mult
        self.floor = floor

    def position(self, step: int) -> tuple[int, int]:
        """``(t_cur, T_i)`` after ``step`` completed iterations."""
        t_cur, t_i = step, self.t0
        while t_cur >= t_i:
            t_cur -= t_i
            t_i *= self.t_mult
        return t_cur, t_i

    def __call__(self, step: int) -> float:
        t_cur, t_i = self.position(step)
        return self.floor + (1.0 - self.floor) * (1.0 + math.cos(math.pi * t_cur / t_i)) / 2.0


def group_lrs(lr: float, n_groups: int, ratio: float = 0.01) -> list[float]:
    """Log-spaced LRs from ``ratio * lr`` (first group) to ``lr`` (last group, the head)."""
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if n_groups < 1:
        raise ValueError(f"n_groups must be >= 1, got {n_groups}")
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    if n_groups == 1:
        return [lr]
    return [lr * ratio ** ((n_groups - 1 - g) / (n_groups - 1)) for g in range(n_groups)]


def cycle_end_iters(steps_per_epoch: int, epochs: int, t0_epochs: int = 1, t_mult: int = 1) -> list[int]:
    """Iteration counts at which a full warm-restart cycle completes within ``epochs`` epochs.

    Cycle ``i`` lasts ``t0_epochs * t_mult**i`` epochs; a partial last cycle is not listed.
    """
    _check_positive(steps_per_epoch=steps_per_epoch, epochs=epochs, t0_epochs=t0_epochs, t_mult=t_mult)
    total = steps_per_epoch * epochs
    ends: list[int] = []
    end, length = 0, t0_epochs * steps_per_epoch
    while end + length <= total:
        end += length
        ends.append(end)
        length *= t_mult
    return ends


def cycle_end_epochs(variant: str, epochs: int) -> list[int]:
    """The epochs (1-based, up to ``epochs``) at which a cycle of ``variant`` ends: every epoch for
    ``sgd``/``adam`` (step decay has no restarts), ``one_cycle`` (one cycle fitted to any budget)
    and ``sgdr``/``sgdr_dlr``; 1, 3, 7, 15, ... for ``sgdr_dlr_clm``."""
    lr_family(variant)  # a known variant
    return cycle_end_iters(1, epochs, 1, CLM_CYCLE_MULT if variant == "sgdr_dlr_clm" else 1)


def whole_cycle_epochs(variant: str, epochs: int) -> tuple[int, str | None]:
    """``(epochs_used, note)``: ``epochs`` rounded down to the last cycle of ``variant`` it
    completes (at least the first), and a note saying so when that differs from ``epochs``
    (None otherwise). E.g. ``sgdr_dlr_clm`` with 5 epochs trains 3: the cycle of epochs 4-7
    would stop at epoch 5 mid-cosine, neither a cycle's end nor a snapshot."""
    ends = cycle_end_epochs(variant, epochs)
    if ends[-1] == epochs:
        return epochs, None
    upcoming = cycle_end_epochs(variant, 2 * epochs + 1)[len(ends)]
    trained = f"{ends[-1]} epoch{'s' if ends[-1] > 1 else ''}"
    return ends[-1], (
        f"{variant}: {epochs} epochs end inside a cycle (its cycles end at epochs "
        f"{', '.join(map(str, ends + [upcoming]))}, ...): training {trained}, "
        f"the last whole cycle; {upcoming} would complete the next"
    )


def make_optimizer(
    variant: str,
    param_groups: list[list[torch.nn.Parameter]],
    lr: float,
    *,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    dlr_ratio: float = 0.01,
) -> torch.optim.Optimizer:
    """The optimiser of ``variant`` over the layer groups (first to head): Adam for ``adam``, AdamW
    with fastai's betas and eps for ``one_cycle``, else SGD with momentum; group LRs log-spaced from ``dlr_ratio * lr`` to ``lr`` for the DLR
    variants, else ``lr`` for every group. ``momentum`` is ignored by Adam."""
    lrs = group_lrs(lr, len(param_groups), dlr_ratio) if variant in DLR_VARIANTS else [lr] * len(param_groups)
    groups = [{"params": list(p), "lr": g_lr} for p, g_lr in zip(param_groups, lrs)]
    if variant == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
    if variant == "one_cycle":
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.99), eps=1e-5, weight_decay=weight_decay)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)


def make_schedule(
    variant: str,
    param_groups: list[list[torch.nn.Parameter]],
    lr: float,
    steps_per_epoch: int,
    epochs: int,
    *,
    lr_min: float | None = None,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    step_epochs: int | None = None,
    gamma: float = 0.1,
    dlr_ratio: float = 0.01,
    cycle_mult: int = CLM_CYCLE_MULT,
) -> Schedule:
    """Build the optimiser and per-iteration scheduler of ``variant`` (one of :data:`SCHEDULES`).

    ``param_groups`` are the model's layer groups, first (stem) to last (head). ``lr_min``
    (default ``lr / 100``) is the cosine floor of the head; ``step_epochs`` (default
    ``max(1, epochs // 3)``) and ``gamma`` define the step decay of ``sgd``/``adam``;
    ``momentum`` is ignored by ``adam``.
    """
    if variant not in SCHEDULES:
        raise ValueError(f"unknown schedule variant {variant!r}; allowed: {', '.join(SCHEDULES)}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    _check_positive(steps_per_epoch=steps_per_epoch, epochs=epochs)
    if not param_groups:
        raise ValueError("param_groups is empty: pass at least one non-empty list of parameters")
    empty = [i for i, g in enumerate(param_groups) if len(g) == 0]
    if empty:
        raise ValueError(f"parameter groups {empty} are empty: every group needs >= 1 parameter")
    lr_min = lr / 100 if lr_min is None else lr_min
    if not 0.0 <= lr_min <= lr:
        raise ValueError(f"lr_min must be in [0, lr={lr}], got {lr_min}")

    total = steps_per_epoch * epochs
    optimizer = make_optimizer(
        variant, param_groups, lr, momentum=momentum, weight_decay=weight_decay, dlr_ratio=dlr_ratio
    )

    scheduler: LRScheduler
    if variant in STEP_DECAY_VARIANTS:
        step_epochs = max(1, epochs // 3) if step_epochs is None else step_epochs
        _check_positive(step_epochs=step_epochs)
        scheduler = StepLR(optimizer, step_size=step_epochs * steps_per_epoch, gamma=gamma)
        return Schedule(optimizer, scheduler, variant, [total])
    if variant == "one_cycle":
        high, low = ONE_CYCLE["momentum"]
        scheduler = OneCycleLR(
            optimizer,
            max_lr=[float(g["lr"]) for g in optimizer.param_groups],
            total_steps=total,
            pct_start=ONE_CYCLE["pct_start"],
            anneal_strategy="cos",
            div_factor=ONE_CYCLE["div_factor"],
            final_div_factor=ONE_CYCLE["final_div_factor"],
            cycle_momentum=True,
            base_momentum=low,
            max_momentum=high,
        )
        return Schedule(optimizer, scheduler, variant, [total])
    if variant == "sgdr":
        scheduler = CosineAnnealingWarmRestarts(optimizer, T_0=steps_per_epoch, eta_min=lr_min)
        return Schedule(optimizer, scheduler, variant, cycle_end_iters(steps_per_epoch, epochs))
    t_mult = cycle_mult if variant == "sgdr_dlr_clm" else 1
    _check_positive(cycle_mult=t_mult)
    scheduler = LambdaLR(optimizer, WarmRestartCosine(steps_per_epoch, t_mult, lr_min / lr))
    return Schedule(optimizer, scheduler, variant, cycle_end_iters(steps_per_epoch, epochs, 1, t_mult))


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
