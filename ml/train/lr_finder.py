"""LR range test (Smith): ramp the LR over mini-batches, watch the smoothed loss, bracket the choice.

The thesis stresses a *bracket* on the log scale rather than a point: :func:`bracket_to_minimum`
spans from the valley (or the minimum-loss LR / 10, whichever is lower) up to the minimum-loss
LR; the single ``chosen`` rate is the minimum-loss LR / 10 (Smith; fastai's ``lr_min``) clipped
into it. :func:`bracket_around` gives a symmetric bracket around any rate.

The test trains with the training loop's own step (:class:`ml.train.step.TrainStep`: precision,
gradient scaling, non-finite losses) and batch loop (:func:`ml.train.step.run_batches`), as
fastai's ``LRFinder`` is a callback on its one loop: :class:`LRFinder` sets the LR before each
batch, records the smoothed loss after it and stops the loop when the loss diverges.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice

import numpy as np
import torch

from ml.train.step import BatchCallback, LossFn, NonFiniteLoss, TrainStep, run_batches

MODES = ("exp", "linear")
log = logging.getLogger("ml.train")

StepCallback = Callable[[int, float, float, float], None]
"""Called after every iteration with ``(iteration, lr, raw_loss, smoothed_loss)``."""


@dataclass
class LRFinderResult:
    """History of an LR range test and the LRs suggested from it."""

    lrs: list[float]
    losses: list[float]
    raw_losses: list[float]
    suggestions: dict[str, float]
    chosen: float
    bracket: tuple[float, float]
    stopped_early: bool
    descended: bool = True
    """Whether the smoothed loss fell below its value at the start of the ramp (:func:`loss_went_down`).
    False: no LR of the tested range lowered the loss, and ``chosen`` (the ramp's start) is not
    a learning rate to train with."""


def ramp(start_lr: float, end_lr: float, num_iter: int, mode: str = "exp") -> list[float]:
    """The ``num_iter`` LRs of the test, from ``start_lr`` to ``end_lr`` inclusive.

    ``exp``: ``start * (end / start) ** (i / (num_iter - 1))``; ``linear``: evenly spaced.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; allowed: {', '.join(MODES)}")
    if num_iter < 2:
        raise ValueError(f"num_iter must be >= 2, got {num_iter}")
    if not 0 < start_lr < end_lr:
        raise ValueError(f"need 0 < start_lr < end_lr, got start_lr={start_lr}, end_lr={end_lr}")
    fractions = [i / (num_iter - 1) for i in range(num_iter)]
    if mode == "exp":
        return [start_lr * (end_lr / start_lr) ** f for f in fractions]
    return [start_lr + (end_lr - start_lr) * f for f in fractions]


class LRFinder(BatchCallback):
    """The LR range test as a callback on :func:`~ml.train.step.run_batches`.

    Before each batch it sets the next LR of ``plan`` on the parameter group with the largest
    initial LR, the other groups keeping their ratio to it (discriminative LRs); after it, it
    records the raw and the smoothed loss (the debiased EMA ``avg_i / (1 - smooth**(i + 1))``)
    and ends the loop at the end of the plan or once the smoothed loss exceeds ``diverge`` times
    the best so far. ``step_callback`` sees every recorded iteration.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        plan: Sequence[float],
        smooth: float = 0.98,
        diverge: float = 4.0,
        step_callback: StepCallback | None = None,
    ) -> None:
        if not 0.0 <= smooth < 1.0:
            raise ValueError(f"smooth must be in [0, 1), got {smooth}")
        if not diverge > 1.0:
            raise ValueError(f"diverge must be > 1, got {diverge}")
        bases = [float(g["lr"]) for g in optimizer.param_groups]
        if not max(bases) > 0:
            raise ValueError(f"the optimizer's parameter groups need a positive initial lr, got {bases}")
        self.optimizer, self.plan, self.smooth, self.diverge = optimizer, list(plan), smooth, diverge
        self.step_callback = step_callback
        self.scales = [b / max(bases) for b in bases]
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.raw_losses: list[float] = []
        self._avg, self._best = 0.0, math.inf

    def on_batch_begin(self) -> None:
        lr = self.plan[len(self.lrs)]
        for group, scale in zip(self.optimizer.param_groups, self.scales):
            group["lr"] = lr * scale

    def on_batch_end(self, loss: torch.Tensor, size: int) -> bool:
        i, value = len(self.lrs), float(loss)
        lr = self.plan[i]
        self._avg = self.smooth * self._avg + (1.0 - self.smooth) * value
        smoothed = self._avg / (1.0 - self.smooth ** (i + 1))
        self.lrs.append(lr)
        self.raw_losses.append(value)
        self.losses.append(smoothed)
        if self.step_callback is not None:
            self.step_callback(i, lr, value, smoothed)
        self._best = min(self._best, smoothed)
        return smoothed > self.diverge * self._best or len(self.lrs) == len(self.plan)


def lr_range_test(
    model: torch.nn.Module,
    loader: Iterable,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_iter: int = 100,
    mode: str = "exp",
    smooth: float = 0.98,
    diverge: float = 4.0,
    device: torch.device | str | None = None,
    amp_dtype: torch.dtype | None = None,
    step_callback: StepCallback | None = None,
) -> LRFinderResult:
    """Run the LR range test and restore ``model`` and ``optimizer`` to their state before it.

    The loader yields ``(inputs, targets, ...)`` batches and is cycled when shorter than
    ``num_iter``. The ramped LR goes to the parameter group with the largest initial LR; the
    other groups keep their ratio to it (discriminative LRs). The smoothed loss is the debiased
    EMA ``avg_i / (1 - smooth**(i + 1))``; the test stops early once it exceeds ``diverge`` times
    the best smoothed loss so far, or the loss is no longer finite (that step is not taken).
    Each step is the training loop's (:class:`~ml.train.step.TrainStep` at ``amp_dtype``).
    Batches are moved to ``device`` (default: the device of the model's parameters, where the
    model must already be). Gradients are left as ``None`` afterwards.
    """
    plan = ramp(start_lr, end_lr, num_iter, mode)
    finder = LRFinder(optimizer, plan, smooth, diverge, step_callback)
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    step = TrainStep(model, optimizer, loss_fn, device=dev, amp_dtype=amp_dtype, check_finite=True)

    model_state = copy.deepcopy(model.state_dict())
    optimizer_state = copy.deepcopy(optimizer.state_dict())
    was_training = model.training
    try:
        model.train()
        batches = ((batch[0].to(dev), batch[1].to(dev)) for batch in _cycle(loader))
        run_batches(step, islice(batches, num_iter), (finder,))
    except NonFiniteLoss as e:
        if not finder.lrs:
            raise ValueError(
                f"loss is {e.value} at the first step (lr={plan[0]:g}): check the model, data and loss_fn"
            ) from None
    finally:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)
        optimizer.zero_grad(set_to_none=True)
        model.train(was_training)

    lrs, losses = finder.lrs, finder.losses
    if len(lrs) < 2:
        raise ValueError(
            f"the loss diverged after {len(lrs)} iteration(s) (start_lr={start_lr:g}): "
            "lower start_lr or end_lr so that the range test records at least 2 points"
        )
    suggestions = suggest(lrs, losses)
    bracket = bracket_to_minimum(suggestions, lrs)
    chosen = min(max(suggestions["min_div10"], bracket[0]), bracket[1])
    went_down = loss_went_down(losses)
    if not went_down:
        log.warning(
            "the LR range test found no learning rate in %g..%g that lowered the loss (its smoothed "
            "minimum is at the start of the ramp): the chosen %g will not train. Check the weights "
            "and the data, try another schedule's range test, or set the LR yourself",
            lrs[0],
            lrs[-1],
            chosen,
        )
    return LRFinderResult(
        lrs=lrs,
        losses=losses,
        raw_losses=finder.raw_losses,
        suggestions=suggestions,
        chosen=chosen,
        bracket=bracket,
        stopped_early=len(lrs) < num_iter,  # diverged (or not finite) before the end of the ramp
        descended=went_down,
    )


def loss_went_down(losses: Sequence[float], skip: float = 0.1) -> bool:
    """Whether the smoothed loss reaches its minimum after the first ``skip`` share of the
    points. fastai's finder drops its first tenth before suggesting for the same reason: there the
    EMA still rests on a few batches. A curve whose minimum lies in that head never went down:
    the loss only rose as the LR grew (seen on isic9 with a DLR ramp whose body barely moves)."""
    y = np.asarray(losses, dtype=float)
    return bool(len(y) >= 2 and int(np.argmin(y)) >= max(1, int(len(y) * skip)))


def suggest(lrs: Sequence[float], losses: Sequence[float]) -> dict[str, float]:
    """LR suggestions from a (smoothed) loss curve.

    - ``valley``: the longest strictly descending subsequence of the losses (fastai's "valley"),
      taking the point two thirds of the way from its start to its end (lower, safer LRs than
      its bottom).
    - ``steepest``: the LR where ``d loss / d log10(lr)`` is most negative (``numpy.gradient``).
    - ``min_div10``: the LR of the minimum loss divided by 10.
    """
    x, y = _check_curve(lrs, losses)
    start, end = _longest_descent(y)
    valley = int(start + (2 * (end - start)) // 3)
    steepest = int(np.argmin(np.gradient(y, np.log10(x))))
    return {
        "valley": float(x[valley]),
        "steepest": float(x[steepest]),
        "min_div10": float(x[int(np.argmin(y))] / 10.0),
    }


def bracket_to_minimum(
    suggestions: dict[str, float], lrs: Sequence[float], min_width_decades: float = 0.5
) -> tuple[float, float]:
    """The thesis's bracket: the neighbourhood *below* the minimum-loss point on the log scale,
    from the lower of ``valley`` and ``min_div10`` up to the LR of the minimum smoothed loss
    (``10 * min_div10``), at least ``min_width_decades`` wide, clipped to the tested range
    (widened upwards when the minimum is at its very bottom, so ``lo < hi`` always holds).

    On short, noisy curves (small data) the valley alone lands an order of magnitude or more
    below workable rates; the minimum-loss point bounds the bracket from above instead."""
    lo_tested, hi_tested = float(min(lrs)), float(max(lrs))
    width = 10.0**min_width_decades
    hi = min(10.0 * suggestions["min_div10"], hi_tested)
    lo = max(min(suggestions["valley"], suggestions["min_div10"], hi / width), lo_tested)
    if hi < lo * width:  # the minimum sits at the bottom of the tested range: widen upwards
        hi = min(lo * width, hi_tested)
    return lo, hi


def bracket_around(lr: float, lrs: Sequence[float], width_decades: float = 1.0) -> tuple[float, float]:
    """``(lr / 10**(w/2), lr * 10**(w/2))`` with ``w = width_decades``, clipped to ``[min(lrs), max(lrs)]``."""
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if not width_decades > 0:
        raise ValueError(f"width_decades must be > 0, got {width_decades}")
    if len(lrs) == 0:
        raise ValueError("lrs is empty: need the tested LRs to clip the bracket")
    half = 10.0 ** (width_decades / 2)
    return max(lr / half, float(min(lrs))), min(lr * half, float(max(lrs)))


def _longest_descent(y: np.ndarray) -> tuple[int, int]:
    """First and last index of the first-ending longest strictly decreasing subsequence."""
    n = len(y)
    length = [1] * n
    prev = list(range(n))
    for i in range(1, n):
        for j in range(i):
            if y[i] < y[j] and length[j] + 1 > length[i]:
                length[i], prev[i] = length[j] + 1, j
    end = int(np.argmax(length))
    start = end
    while prev[start] != start:
        start = prev[start]
    return start, end


def _check_curve(lrs: Sequence[float], losses: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(lrs, dtype=float)
    y = np.asarray(losses, dtype=float)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"lrs and losses must be 1-d and equally long, got {x.shape} and {y.shape}")
    if len(x) < 2:
        raise ValueError(f"need at least 2 points to suggest an LR, got {len(x)}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("lrs and losses must be finite")
    if not (np.all(x > 0) and np.all(np.diff(x) > 0)):
        raise ValueError("lrs must be positive and strictly increasing")
    return x, y


def _cycle(loader: Iterable) -> Iterator:
    """Yield batches forever, restarting ``loader`` when it is exhausted."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("the loader yielded no batches")
