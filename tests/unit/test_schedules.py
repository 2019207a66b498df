"""Schedules against the closed forms of step decay and SGDR (with DLR and CLM)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ml.train.schedules import (
    LR_FAMILIES,
    SCHEDULES,
    WarmRestartCosine,
    cycle_end_epochs,
    cycle_end_iters,
    group_lrs,
    lr_family,
    make_schedule,
    whole_cycle_epochs,
)


def _groups(n: int) -> list[list[torch.nn.Parameter]]:
    return [[torch.nn.Parameter(torch.zeros(2))] for _ in range(n)]


def _trace(schedule, iters: int) -> list[list[float]]:
    """LRs in use at iterations 0..iters-1 (index t = number of completed iterations)."""
    out = []
    for _ in range(iters):
        out.append(schedule.lrs())
        schedule.optimizer.step()
        schedule.scheduler.step()
    return out


def _cosine(base: float, floor: float, t_cur: int, t_i: int) -> float:
    return floor + (base - floor) * (1 + math.cos(math.pi * t_cur / t_i)) / 2


def test_group_lrs_exact_log_spacing():
    assert group_lrs(0.1, 1) == [0.1]
    lrs = group_lrs(0.1, 3, ratio=0.01)
    assert lrs == pytest.approx([0.001, 0.01, 0.1], rel=1e-12)
    five = group_lrs(2.0, 5, ratio=1e-4)
    ratios = [b / a for a, b in zip(five, five[1:])]
    assert ratios == pytest.approx([10.0] * 4, rel=1e-12)
    assert five[0] == pytest.approx(2e-4, rel=1e-12) and five[-1] == 2.0


def test_cycle_end_iters_constant_doubling_and_partial_cycle():
    assert cycle_end_iters(10, 3) == [10, 20, 30]
    # CLM: cycles of 1, 2, 4 epochs end after 1, 3, 7 epochs.
    assert cycle_end_iters(4, 7, t0_epochs=1, t_mult=2) == [4, 12, 28]
    # 5 epochs: the 4-epoch cycle starting at epoch 3 is partial and no snapshot point.
    assert cycle_end_iters(4, 5, t0_epochs=1, t_mult=2) == [4, 12]
    assert cycle_end_iters(3, 5, t0_epochs=2) == [6, 12]


@pytest.mark.parametrize("variant", ["sgd", "adam"])
def test_step_decay_values(variant):
    s = make_schedule(variant, _groups(2), lr=0.01, steps_per_epoch=5, epochs=6)
    # default step_epochs = 6 // 3 = 2 epochs = 10 iterations
    trace = _trace(s, 30)
    for t, lrs in enumerate(trace):
        assert lrs == pytest.approx([0.01 * 0.1 ** (t // 10)] * 2, rel=1e-12), t
    assert s.cycle_end_iters == [30]
    custom = make_schedule(variant, _groups(1), lr=1.0, steps_per_epoch=2, epochs=4, step_epochs=1, gamma=0.5)
    assert [lr[0] for lr in _trace(custom, 8)] == pytest.approx([1, 1, 0.5, 0.5, 0.25, 0.25, 0.125, 0.125])


def test_optimizer_types_and_hyperparameters():
    sgd = make_schedule("sgd", _groups(2), 0.01, 3, 3, momentum=0.8, weight_decay=5e-4)
    assert type(sgd.optimizer) is torch.optim.SGD
    assert all(g["momentum"] == 0.8 and g["weight_decay"] == 5e-4 for g in sgd.optimizer.param_groups)
    adam = make_schedule("adam", _groups(2), 0.01, 3, 3)
    assert type(adam.optimizer) is torch.optim.Adam
    for v in ("sgdr", "sgdr_dlr", "sgdr_dlr_clm"):
        s = make_schedule(v, _groups(2), 0.01, 3, 3)
        assert type(s.optimizer) is torch.optim.SGD and s.optimizer.param_groups[0]["momentum"] == 0.9
        assert s.variant == v


def test_sgdr_closed_form_every_iteration():
    lr, lr_min, spe = 0.1, 0.002, 10
    s = make_schedule("sgdr", _groups(3), lr, spe, 3, lr_min=lr_min)
    assert isinstance(s.scheduler, torch.optim.lr_scheduler.CosineAnnealingWarmRestarts)
    trace = _trace(s, 30)
    for t, lrs in enumerate(trace):
        want = _cosine(lr, lr_min, t % spe, spe)
        assert lrs == pytest.approx([want] * 3, rel=1e-12, abs=1e-15), t
    # fractional epochs: half-way through an epoch is the mid-point of the cosine
    assert trace[15][0] == pytest.approx((lr + lr_min) / 2, rel=1e-12)
    assert trace[10][0] == pytest.approx(lr) and trace[20][0] == pytest.approx(lr)
    assert s.cycle_end_iters == [10, 20, 30]


def test_sgdr_default_lr_min_is_lr_over_100():
    s = make_schedule("sgdr", _groups(1), 0.5, 4, 1)
    trace = _trace(s, 4)
    assert trace[2][0] == pytest.approx((0.5 + 0.005) / 2, rel=1e-12)


def test_sgdr_dlr_per_group_base_and_floor():
    lr, spe = 0.1, 8
    s = make_schedule("sgdr_dlr", _groups(3), lr, spe, 2)
    bases = [0.001, 0.01, 0.1]
    assert s.lrs() == pytest.approx(bases, rel=1e-12)
    trace = _trace(s, 16)
    for t, lrs in enumerate(trace):
        want = [_cosine(b, b / 100, t % spe, spe) for b in bases]
        assert lrs == pytest.approx(want, rel=1e-12), t
    assert s.cycle_end_iters == [8, 16]


def test_sgdr_dlr_clm_doubling_cycles():
    lr, lr_min, spe = 0.2, 0.02, 4
    s = make_schedule("sgdr_dlr_clm", _groups(2), lr, spe, 7, lr_min=lr_min, dlr_ratio=0.1)
    bases = [0.02, 0.2]
    assert s.cycle_end_iters == [4, 12, 28]
    trace = _trace(s, 28)
    for t, lrs in enumerate(trace):
        if t < 4:
            t_cur, t_i = t, 4
        elif t < 12:
            t_cur, t_i = t - 4, 8
        else:
            t_cur, t_i = t - 12, 16
        want = [_cosine(b, b * lr_min / lr, t_cur, t_i) for b in bases]
        assert lrs == pytest.approx(want, rel=1e-12), t
    # restarts right after the cycle ends (1 and 3 epochs), lowest just before them
    assert trace[4] == pytest.approx(bases) and trace[12] == pytest.approx(bases)
    assert trace[11][1] < trace[3][1] < lr


def test_clm_with_cycle_mult_three():
    s = make_schedule("sgdr_dlr_clm", _groups(1), 1.0, 2, 8, cycle_mult=3)
    assert s.cycle_end_iters == [2, 8]


@pytest.mark.parametrize("variant", SCHEDULES)
def test_state_dict_round_trip_mid_cycle(variant):
    def build():
        return make_schedule(variant, _groups(2), 0.05, 4, 6)

    a = build()
    _trace(a, 7)  # mid-way through the second cycle
    opt_state = a.optimizer.state_dict()
    sched_state = a.scheduler.state_dict()
    expected = _trace(a, 12)

    b = build()
    b.optimizer.load_state_dict(opt_state)
    b.scheduler.load_state_dict(sched_state)
    assert np.array(_trace(b, 12)) == pytest.approx(np.array(expected), rel=1e-12)


def test_warm_restart_cosine_factor():
    f = WarmRestartCosine(t0=2, t_mult=2, floor=0.1)
    assert [f.position(t) for t in range(7)] == [(0, 2), (1, 2), (0, 4), (1, 4), (2, 4), (3, 4), (0, 8)]
    assert f(0) == 1.0 and f(1) == pytest.approx(0.55) and f(4) == pytest.approx(0.55)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"variant": "cosine"}, "allowed: sgd, adam, sgdr, sgdr_dlr, sgdr_dlr_clm"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"lr": -1.0}, "lr must be > 0"),
        ({"epochs": 0}, "epochs must be a positive integer"),
        ({"steps_per_epoch": 0}, "steps_per_epoch must be a positive integer"),
        ({"param_groups": []}, "param_groups is empty"),
        ({"param_groups": [[torch.nn.Parameter(torch.zeros(1))], []]}, r"parameter groups \[1\] are empty"),
        ({"lr_min": 1.0}, "lr_min must be in"),
        ({"variant": "sgd", "step_epochs": 0}, "step_epochs must be a positive integer"),
        ({"variant": "sgdr_dlr_clm", "cycle_mult": 0}, "cycle_mult must be a positive integer"),
    ],
)
def test_errors(kwargs, message):
    args = {"variant": "sgdr", "param_groups": _groups(2), "lr": 0.1, "steps_per_epoch": 3, "epochs": 2}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        make_schedule(**args)


def test_group_lrs_errors():
    with pytest.raises(ValueError, match="n_groups"):
        group_lrs(0.1, 0)
    with pytest.raises(ValueError, match="ratio"):
        group_lrs(0.1, 3, ratio=0.0)


def test_lr_families_group_the_variants_by_optimiser_and_group_lrs():
    assert {v: lr_family(v) for v in SCHEDULES} == {
        "sgd": "sgd",
        "sgdr": "sgd",
        "sgdr_dlr": "sgd_dlr",
        "sgdr_dlr_clm": "sgd_dlr",
        "adam": "adam",
        "one_cycle": "adamw",
    }
    for family, variants in LR_FAMILIES.items():  # one optimiser and one set of LR ratios per family
        built = [make_schedule(v, _groups(3), lr=0.1, steps_per_epoch=2, epochs=1).optimizer for v in variants]
        assert len({type(o) for o in built}) == 1, family
        assert len({tuple(g["lr"] for g in o.param_groups) for o in built}) == 1, family
    with pytest.raises(ValueError, match="allowed"):
        lr_family("cosine")


def test_cycle_end_epochs_per_variant():
    for v in ("sgd", "adam", "sgdr", "sgdr_dlr", "one_cycle"):
        assert cycle_end_epochs(v, 5) == [1, 2, 3, 4, 5]
    assert cycle_end_epochs("sgdr_dlr_clm", 16) == [1, 3, 7, 15]
    # the same ends as the schedule's own snapshot points, in epochs
    s = make_schedule("sgdr_dlr_clm", _groups(2), lr=0.1, steps_per_epoch=4, epochs=15)
    assert [i // 4 for i in s.cycle_end_iters] == cycle_end_epochs("sgdr_dlr_clm", 15)


def test_whole_cycle_epochs_rounds_down_to_the_last_complete_cycle():
    assert whole_cycle_epochs("sgdr_dlr_clm", 7) == (7, None)
    assert whole_cycle_epochs("sgdr_dlr_clm", 1) == (1, None)
    used, note = whole_cycle_epochs("sgdr_dlr_clm", 5)
    assert used == 3 and note.startswith("sgdr_dlr_clm: 5 epochs end inside a cycle") and "7 would" in note
    assert whole_cycle_epochs("sgdr_dlr_clm", 2)[0] == 1 and whole_cycle_epochs("sgdr_dlr_clm", 14)[0] == 7
    for v in ("sgd", "adam", "sgdr", "sgdr_dlr"):
        assert whole_cycle_epochs(v, 5) == (5, None)


def test_one_cycle_is_fastai_s_fit_one_cycle():
    """Warm-up from lr/25 to lr over the first 25 % of the iterations (cosine), cosine down to
    lr/25e4, beta1 0.95 -> 0.85 -> 0.95, AdamW; one cycle: one snapshot, any budget whole."""
    s = make_schedule("one_cycle", _groups(3), 0.02, steps_per_epoch=10, epochs=4, weight_decay=0.01)
    assert isinstance(s.optimizer, torch.optim.AdamW) and s.optimizer.defaults["eps"] == 1e-5
    lrs, betas = [], []
    for _ in range(40):
        lrs.append(s.lrs())
        betas.append(s.optimizer.param_groups[0]["betas"][0])
        s.optimizer.step()
        s.scheduler.step()
    head = [g[-1] for g in lrs]
    assert all(len(set(g)) == 1 for g in lrs), "one LR for every group"
    assert head[0] == pytest.approx(0.02 / 25) and max(head) == pytest.approx(0.02, rel=1e-6)
    peak = int(np.argmax(head))
    assert peak == 9, "the peak ends the first 25 % (OneCycleLR counts the warm-up as pct_start * total - 1 steps)"
    assert head[5] == pytest.approx(0.02 / 25 + (0.02 - 0.02 / 25) * (1 - math.cos(math.pi * 5 / 9)) / 2)
    assert head[-1] == pytest.approx(0.02 / 25e4, rel=0.5) and head[-1] < 0.02 / 1e3
    assert betas[0] == pytest.approx(0.95) and betas[peak] == pytest.approx(0.85) and betas[-1] > 0.94
    assert s.cycle_end_iters == [40] and whole_cycle_epochs("one_cycle", 5) == (5, None)
