"""ml.train.step: the one training step and batch loop that `fit` and the LR range test share."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from ml.train.lr_finder import LRFinder, ramp
from ml.train.step import BatchCallback, NonFiniteLoss, TrainStep, run_batches

CPU = torch.device("cpu")


def _batches(n: int = 4, size: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n * size, 3, generator=g)
    y = (x[:, 0] > 0).long()
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


class Log(BatchCallback):
    def __init__(self, stop_after: int | None = None) -> None:
        self.events: list[str] = []
        self.stop_after = stop_after

    def on_batch_begin(self) -> None:
        self.events.append("begin")

    def on_batch_end(self, loss: torch.Tensor, size: int) -> bool:
        self.events.append(f"end {size}")
        return self.stop_after is not None and self.events.count(f"end {size}") >= self.stop_after


def test_the_step_is_a_plain_sgd_step_and_returns_the_detached_loss() -> None:
    model, twin = _model(), _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _batches()[0]
    loss = TrainStep(model, opt, device=CPU)(x, y)  # cross-entropy by default
    assert not loss.requires_grad
    expected = nn.functional.cross_entropy(twin(x), y)
    expected.backward()
    with torch.no_grad():
        for p in twin.parameters():
            p -= 0.1 * p.grad
    assert loss.item() == pytest.approx(expected.item())
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.allclose(a, b)


def test_bf16_autocast_and_no_scaler_off_cuda() -> None:
    model = _model()
    seen: set[torch.dtype] = set()
    model[2].register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1), device=CPU, amp_dtype=torch.bfloat16)
    step(*_batches()[0])
    assert seen == {torch.bfloat16} and not step.scaler.is_enabled()
    assert TrainStep(model, step.optimizer, device=CPU).check_finite  # free off CUDA: on by default


def test_a_non_finite_loss_is_refused_before_the_update_with_its_iteration() -> None:
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    step = TrainStep(
        model, torch.optim.SGD(model.parameters(), lr=0.1), lambda out, y: out.sum() * float("nan"), device=CPU
    )
    log = Log()
    with pytest.raises(NonFiniteLoss, match=r"non-finite training loss at iteration 8 \(lr too high\?\)") as err:
        run_batches(step, _batches(), (log,), start=7)
    assert isinstance(err.value, FloatingPointError) and err.value.iteration == 8
    assert log.events == ["begin"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    again = pickle.loads(pickle.dumps(err.value))  # crosses process boundaries (Ray trials) intact
    assert str(again) == str(err.value)
    assert (
        str(NonFiniteLoss(float("inf"), 32, exact=False)) == "non-finite training loss by iteration 32 (lr too high?)"
    )


def test_run_batches_calls_every_callback_around_each_step_and_stops_when_asked() -> None:
    model = _model()
    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1), device=CPU)
    first, second = Log(stop_after=2), Log()
    assert run_batches(step, _batches(), (first, second)) == 2  # every callback sees the last batch
    assert first.events == second.events == ["begin", "end 8", "begin", "end 8"]
    assert run_batches(step, _batches(n=3)) == 3


def test_the_lr_finder_callback_ramps_records_and_stops_at_the_end_of_its_plan() -> None:
    model = _model()
    opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.01}, {"params": model[2].parameters(), "lr": 1.0}])
    plan = ramp(1e-4, 1e-2, 5)
    finder = LRFinder(opt, plan, smooth=0.0, diverge=1e9)
    seen: list[list[float]] = []
    spy = Log()
    spy.on_batch_begin = lambda: seen.append([g["lr"] for g in opt.param_groups])  # after the finder's
    assert run_batches(TrainStep(model, opt, device=CPU), _batches() * 3, (finder, spy)) == 5
    assert finder.lrs == plan and finder.losses == finder.raw_losses
    assert seen == [pytest.approx([lr / 100, lr], rel=1e-12) for lr in plan]
