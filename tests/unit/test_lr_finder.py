"""LR range test: ramps, smoothing, suggestions on fixed curves, restoration, divergence, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from ml.train.lr_finder import bracket_around, lr_range_test, suggest

torch.set_flush_denormal(True)


def _data(n_batches: int = 4, batch: int = 8, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_batches * batch, 3, generator=g)
    y = (x[:, 0] > 0).long()
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, len(x), batch)]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))


def test_exp_ramp_history_and_debiased_smoothing():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    res = lr_range_test(
        model, _data(), nn.CrossEntropyLoss(), opt, start_lr=1e-5, end_lr=1e-2, num_iter=10, diverge=1e9
    )
    assert not res.stopped_early
    want = [1e-5 * (1e-2 / 1e-5) ** (i / 9) for i in range(10)]
    assert res.lrs == pytest.approx(want, rel=1e-12)
    assert res.lrs[-1] == pytest.approx(1e-2, rel=1e-12)
    # debiased EMA, recomputed by hand from the raw losses
    avg, smoothed = 0.0, []
    for i, loss in enumerate(res.raw_losses):
        avg = 0.98 * avg + 0.02 * loss
        smoothed.append(avg / (1 - 0.98 ** (i + 1)))
    assert res.losses == pytest.approx(smoothed, rel=1e-12)
    assert res.losses[0] == pytest.approx(res.raw_losses[0], rel=1e-12)
    assert set(res.suggestions) == {"valley", "steepest", "min_div10"}
    lo, hi = res.bracket
    assert lo <= res.chosen <= hi and 1e-5 <= lo and hi <= 1e-2
    assert hi == pytest.approx(min(10 * res.suggestions["min_div10"], 1e-2))


def test_linear_ramp_cycles_a_short_loader():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen: list[int] = []
    res = lr_range_test(
        model,
        _data(n_batches=3),
        nn.CrossEntropyLoss(),
        opt,
        start_lr=0.001,
        end_lr=0.01,
        num_iter=7,
        mode="linear",
        smooth=0.0,
        diverge=1e9,
        step_callback=lambda i, lr, raw, sm: seen.append(i),
    )
    assert res.lrs == pytest.approx([0.001 + 0.0015 * i for i in range(7)], rel=1e-12)
    assert seen == list(range(7))  # 7 iterations from a 3-batch loader
    assert res.losses == res.raw_losses  # smooth=0 is no smoothing


def test_restores_model_and_optimizer_state_exactly():
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    data = _data()
    x, y = data[0]
    nn.CrossEntropyLoss()(model(x), y).backward()
    opt.step()  # so that the optimizer has state (exp_avg, exp_avg_sq, step)
    opt.zero_grad(set_to_none=True)
    model.eval()
    before_model = {k: v.clone() for k, v in model.state_dict().items()}
    before_opt = opt.state_dict()
    before_opt = {
        "param_groups": [dict(g) for g in before_opt["param_groups"]],
        "state": {k: {n: t.clone() for n, t in s.items()} for k, s in before_opt["state"].items()},
    }

    lr_range_test(model, data, nn.CrossEntropyLoss(), opt, start_lr=1e-4, end_lr=1.0, num_iter=12)

    after = model.state_dict()
    assert after.keys() == before_model.keys()
    for k, v in before_model.items():
        assert torch.equal(after[k], v), k
    assert not model.training
    after_opt = opt.state_dict()
    assert after_opt["param_groups"] == before_opt["param_groups"]
    assert after_opt["state"].keys() == before_opt["state"].keys()
    for k, s in before_opt["state"].items():
        assert s.keys() == after_opt["state"][k].keys()
        for n, t in s.items():
            assert torch.equal(after_opt["state"][k][n], t), (k, n)
    assert all(p.grad is None for p in model.parameters())


def test_divergence_stops_early():
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    x = torch.randn(16, 2)
    y = x @ torch.tensor([[1.0], [-2.0]])
    loader = [(x[:8], y[:8]), (x[8:], y[8:])]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    res = lr_range_test(model, loader, nn.MSELoss(), opt, start_lr=1e-3, end_lr=1e4, num_iter=100)
    assert res.stopped_early
    assert 2 <= len(res.lrs) < 100
    assert res.losses[-1] > 4.0 * min(res.losses)
    assert all(loss <= 4.0 * min(res.losses[: i + 1]) for i, loss in enumerate(res.losses[:-1]))
    assert res.bracket[1] <= res.lrs[-1]


def test_a_ramp_that_never_lowers_the_loss_says_so(caplog):
    """A curve that only rises (seen on isic9: a DLR ramp on a backbone pretrained on other
    images) has its minimum at the ramp's start: the result says it did not descend and the
    library warns, since ``chosen`` is then the ramp's start and would train nothing."""
    import logging

    model = _model()
    rising = iter(range(1000))

    def loss_fn(out, y):  # depends on the model (it has a gradient) and rises every step
        return nn.functional.cross_entropy(out, y) * 0.0 + 1.0 + 0.05 * next(rising)

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with caplog.at_level(logging.WARNING, logger="ml.train"):
        res = lr_range_test(model, _data(), loss_fn, opt, start_lr=1e-5, end_lr=1.0, num_iter=30)
    assert not res.descended and len(res.lrs) == 30
    assert res.chosen == pytest.approx(1e-5)  # the ramp's start: what the warning is about
    assert "no learning rate in 1e-05..1 that lowered the loss" in caplog.text
    # a curve that falls and then rises is the normal case: no warning
    caplog.clear()
    falling = iter(range(1000))

    def dip(out, y):
        i = next(falling)
        return nn.functional.cross_entropy(out, y) * 0.0 + 1.0 + 0.01 * (i - 20) ** 2

    with caplog.at_level(logging.WARNING, logger="ml.train"):
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        res = lr_range_test(model, _data(), dip, opt, start_lr=1e-5, end_lr=1.0, num_iter=30)
    assert res.descended and "lowered the loss" not in caplog.text


def test_a_non_finite_loss_mid_run_stops_early_before_its_update():
    """The training loop's step refuses a nan loss before the update; the test keeps what it
    recorded up to there and restores the model."""
    calls: list[int] = []

    def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        value = nn.functional.cross_entropy(out, y)
        return value * float("nan") if len(calls) == 4 else value

    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    res = lr_range_test(model, _data(), loss, opt, start_lr=1e-4, end_lr=1e-2, num_iter=10, diverge=1e9)
    assert res.stopped_early and len(calls) == 4
    assert res.lrs == pytest.approx([1e-4 * 100 ** (i / 9) for i in range(3)], rel=1e-12)
    assert all(math.isfinite(v) for v in res.raw_losses + res.losses)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_discriminative_ratio_preserved_across_two_groups():
    model = _model()
    opt = torch.optim.SGD(
        [{"params": model[0].parameters(), "lr": 1e-3}, {"params": model[3].parameters(), "lr": 1e-1}]
        + [{"params": model[1].parameters(), "lr": 1e-1}]
    )
    seen: list[tuple[float, list[float]]] = []
    res = lr_range_test(
        model,
        _data(),
        nn.CrossEntropyLoss(),
        opt,
        start_lr=1e-4,
        end_lr=1e-1,
        num_iter=8,
        diverge=1e9,
        step_callback=lambda i, lr, raw, sm: seen.append((lr, [g["lr"] for g in opt.param_groups])),
    )
    assert len(seen) == 8
    for (lr, groups), ramp_lr in zip(seen, res.lrs):
        assert lr == ramp_lr
        assert groups[1] == pytest.approx(lr, rel=1e-12) and groups[2] == pytest.approx(lr, rel=1e-12)
        assert groups[0] / groups[1] == pytest.approx(0.01, rel=1e-12)
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-1, 1e-1]


def test_suggest_valley_on_fixed_curves():
    lrs = [10.0**-k for k in range(9, 0, -1)]
    # longest descent 5,4,3,2,1,0.5 spans indices 0..6; two thirds in -> index 4
    assert suggest(lrs, [5, 4, 6, 3, 2, 1, 0.5, 7, 8])["valley"] == lrs[4]
    # an early rise first: descent 9..4 spans indices 3..8 -> 3 + (2*5)//3 = 6
    lrs10 = [10.0 ** (k / 2) for k in range(-14, -4)]
    assert suggest(lrs10, [1, 2, 3, 9, 8, 7, 6, 5, 4, 10])["valley"] == lrs10[6]


def test_suggest_steepest_and_min_div10_on_a_smooth_curve():
    x = np.linspace(-6.0, 0.0, 61)  # log10 lr, steps of 0.1
    lrs = list(10.0**x)
    # falls fastest at log10 lr = -3 (inflection of tanh), minimum at -1, then rises
    losses = list(2.0 - np.tanh(2.0 * (x + 3.0)) + 0.5 * (x + 1.0) ** 2 * (x > -1.0))
    s = suggest(lrs, losses)
    assert s["steepest"] == pytest.approx(1e-3, rel=1e-9)
    assert s["min_div10"] == pytest.approx(1e-2, rel=1e-9)  # minimum at log10 lr = -1
    # the descent spans the whole decreasing part (index 0 to 50): valley at index 33
    assert s["valley"] == pytest.approx(10.0 ** x[33], rel=1e-9)


def test_bracket_rule_and_clipping():
    lrs = [1e-6, 1e-1]
    lo, hi = bracket_around(1e-3, lrs)
    assert lo == pytest.approx(1e-3 / math.sqrt(10)) and hi == pytest.approx(1e-3 * math.sqrt(10))
    assert bracket_around(1e-3, lrs, width_decades=2.0) == pytest.approx((1e-4, 1e-2))
    assert bracket_around(5e-2, lrs) == pytest.approx((5e-2 / math.sqrt(10), 1e-1))
    assert bracket_around(2e-6, lrs) == pytest.approx((1e-6, 2e-6 * math.sqrt(10)))


def test_errors():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = nn.CrossEntropyLoss()
    with pytest.raises(ValueError, match="num_iter must be >= 2"):
        lr_range_test(model, _data(), loss, opt, num_iter=1)
    with pytest.raises(ValueError, match="no batches"):
        lr_range_test(model, [], loss, opt, num_iter=5)
    with pytest.raises(ValueError, match="allowed: exp, linear"):
        lr_range_test(model, _data(), loss, opt, mode="cos")
    with pytest.raises(ValueError, match="start_lr < end_lr"):
        lr_range_test(model, _data(), loss, opt, start_lr=1.0, end_lr=0.1)
    with pytest.raises(ValueError, match="first step"):
        lr_range_test(model, _data(), lambda out, y: out.sum() * float("nan"), opt, num_iter=5)
    with pytest.raises(ValueError, match="at least 2 points"):
        suggest([1e-3], [1.0])
    with pytest.raises(ValueError, match="strictly increasing"):
        suggest([1e-3, 1e-4], [1.0, 2.0])
    with pytest.raises(ValueError, match="lr must be > 0"):
        bracket_around(0.0, [1e-3])


def test_bf16_autocast_runs_and_restores():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    res = lr_range_test(
        model,
        _data(),
        nn.CrossEntropyLoss(),
        opt,
        start_lr=1e-4,
        end_lr=1e-1,
        num_iter=6,
        amp_dtype=torch.bfloat16,
        diverge=1e9,
    )
    assert len(res.lrs) == 6 and all(math.isfinite(v) for v in res.raw_losses)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert opt.state_dict()["state"] == {}


def test_bracket_runs_from_the_valley_to_the_minimum_loss_point():
    from ml.train.lr_finder import bracket_to_minimum

    lrs = [1e-6, 1e-1]
    assert bracket_to_minimum({"valley": 6e-4, "min_div10": 5e-3, "steepest": 1.0}, lrs) == pytest.approx((6e-4, 5e-2))
    # min_div10 below the valley: the bracket starts there
    assert bracket_to_minimum({"valley": 3e-3, "min_div10": 1e-3, "steepest": 1.0}, lrs) == pytest.approx((1e-3, 1e-2))
    # at least half a decade wide, and clipped to the tested range
    lo, hi = bracket_to_minimum({"valley": 0.09, "min_div10": 0.05, "steepest": 1.0}, lrs)
    assert hi == pytest.approx(1e-1) and lo == pytest.approx(1e-1 / 10**0.5)


def test_bracket_keeps_its_width_when_the_minimum_is_the_first_tested_rate():
    """A curve whose smoothed minimum is its first point (the loss never fell: too few
    iterations, noisy small data) gives min_div10 below the tested range; the bracket still
    spans half a decade upwards from the bottom instead of collapsing to one point."""
    from ml.train.lr_finder import bracket_to_minimum

    lrs = list(np.geomspace(1e-7, 10.0, 12))
    lo, hi = bracket_to_minimum({"valley": 1e-7, "min_div10": 1e-8, "steepest": 1e-7}, lrs)
    assert lo == pytest.approx(1e-7) and hi == pytest.approx(1e-7 * 10**0.5)
    # and never beyond what was tested
    lo, hi = bracket_to_minimum({"valley": 1e-7, "min_div10": 1e-8, "steepest": 1e-7}, [1e-7, 2e-7])
    assert (lo, hi) == pytest.approx((1e-7, 2e-7))


@pytest.mark.parametrize(
    ("schedule", "optimizer", "uniform"),
    [
        ("sgd", torch.optim.SGD, True),
        ("sgdr", torch.optim.SGD, True),
        ("sgdr_dlr", torch.optim.SGD, False),
        ("sgdr_dlr_clm", torch.optim.SGD, False),
        ("adam", torch.optim.Adam, True),
    ],
)
def test_find_lr_ramps_the_optimiser_of_the_schedule_family(monkeypatch, schedule, optimizer, uniform):
    from ml.train import recipes
    from ml.train.config import TrainConfig

    seen = {}
    monkeypatch.setattr(recipes, "lr_range_test", lambda model, loader, loss, opt, **k: seen.update(opt=opt))
    images = np.random.default_rng(0).integers(0, 255, size=(6, 16, 16, 3), dtype=np.uint8)
    cfg = TrainConfig(arch="resnet18", schedule=schedule, batch_size=6, device="cpu", progress=False)
    recipes.find_lr((images, np.arange(6) % 3), ["a", "b", "c"], cfg, num_iter=2)
    opt = seen["opt"]
    assert type(opt) is optimizer
    rates = [g["lr"] for g in opt.param_groups]
    assert rates[-1] == 1.0 and (set(rates) == {1.0}) is uniform, rates
    if not uniform:  # DLR: the stem ramps at 1/100 of the head
        assert rates[0] == pytest.approx(0.01)
