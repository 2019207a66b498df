"""The one training step and the batch loop around it, shared by `fit` and the LR range test.

:class:`TrainStep` is the step: forward and loss under the run's autocast dtype, a non-finite
loss refused before the update (where the check needs no device sync), backward through the
run's gradient scaler (fp16 on CUDA), the optimiser step. :func:`run_batches` drives it over
batches with :class:`BatchCallback` hooks around each step, as fastai's training loop does:
`fit`'s epochs (``ml.train.loop``) keep their schedule, snapshots and loss in one, the LR range
test (:class:`ml.train.lr_finder.LRFinder`) sets the LR before each batch, records the smoothed
loss after it and stops the loop when the loss diverges.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ml.train.precision import autocast, grad_scaler

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class NonFiniteLoss(FloatingPointError):
    """A nan or infinite training loss. ``iteration`` (1-based, when known) is the step it came
    from (``exact``) or the last step of those it was summed over (not ``exact``)."""

    def __init__(self, value: float, iteration: int | None = None, exact: bool = True) -> None:
        super().__init__(value, iteration, exact)
        self.value, self.iteration, self.exact = value, iteration, exact

    def __str__(self) -> str:
        where = "" if self.iteration is None else f" {'at' if self.exact else 'by'} iteration {self.iteration}"
        return f"non-finite training loss{where} (lr too high?)"


class TrainStep:
    """One optimisation step of ``model`` on a batch already on ``device``.

    The forward pass and ``loss_fn`` run under autocast at ``amp_dtype`` (None: fp32); the
    backward pass goes through :attr:`scaler` (:func:`~ml.train.precision.grad_scaler`: active
    for fp16 on CUDA only; a run's checkpoint carries its state). With ``check_finite`` (default:
    off CUDA, where reading the loss is free) a non-finite loss raises :class:`NonFiniteLoss`
    before the update; on CUDA the caller checks the losses it reads back anyway.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: LossFn = F.cross_entropy,
        *,
        device: torch.device,
        amp_dtype: torch.dtype | None = None,
        check_finite: bool | None = None,
    ) -> None:
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.device, self.amp_dtype = device, amp_dtype
        self.scaler = grad_scaler(device, amp_dtype)
        self.check_finite = device.type != "cuda" if check_finite is None else check_finite

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Take the step; returns the detached loss, on the device (not read back)."""
        with autocast(self.device, self.amp_dtype):
            loss = self.loss_fn(self.model(inputs), targets)
        if self.check_finite and not math.isfinite(value := loss.item()):  # .item(): far cheaper than torch.isfinite
            raise NonFiniteLoss(value)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach()


class BatchCallback:
    """Per-batch hooks of :func:`run_batches`; both optional no-ops."""

    def on_batch_begin(self) -> None:
        """Called before each step."""

    def on_batch_end(self, loss: torch.Tensor, size: int) -> bool | None:
        """Called after each step with its detached loss (on the device) and the batch size;
        return True to end the loop after this batch."""


def run_batches(
    step: TrainStep,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    callbacks: Sequence[BatchCallback] = (),
    start: int = 0,
) -> int:
    """Run ``step`` over ``(inputs, targets)`` batches with the callbacks' hooks around each,
    until the batches end or a callback's ``on_batch_end`` asks to stop (every callback still
    sees that batch). Returns the number of steps taken. A :class:`NonFiniteLoss` from the step
    propagates with its iteration, counted from ``start`` (the steps taken before this call)."""
    steps = 0
    for inputs, targets in batches:
        for cb in callbacks:
            cb.on_batch_begin()
        try:
            loss = step(inputs, targets)
        except NonFiniteLoss as e:
            e.iteration = start + steps + 1
            raise
        steps += 1
        stop = False
        for cb in callbacks:
            stop = bool(cb.on_batch_end(loss, targets.shape[0])) or stop
        if stop:
            break
    return steps
