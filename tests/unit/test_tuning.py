"""The sweep's pure parts: per-family LR brackets in the search space, ASHA judging only at cycle
ends, whole-cycle budgets, and what an interrupted tune says (no Ray cluster started)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ml.train.schedules import cycle_end_epochs
from tasks.tuning import (
    CLOCK,
    SCORE,
    TuneInterrupted,
    _raise_if_interrupted,
    asha_scheduler,
    schedule_brackets,
    search_space,
    sweep_epochs,
)

FAMILY_BRACKETS = {"sgd": (1e-3, 1e-2), "sgd_dlr": (1e-2, 1e-1), "adam": (1e-5, 1e-4)}


def test_each_schedule_draws_its_lrs_from_its_familys_bracket_once_per_sweep():
    from ray.tune.search.variant_generator import generate_variants

    schedules = ["sgd", "sgdr", "sgdr_dlr", "sgdr_dlr_clm", "adam"]
    space, _ = search_space(FAMILY_BRACKETS, schedules, [False, True], ["resnet18"], force=True, num_samples=3, seed=4)
    family = {"sgd": "sgd", "sgdr": "sgd", "sgdr_dlr": "sgd_dlr", "sgdr_dlr_clm": "sgd_dlr", "adam": "adam"}
    trials = [cfg for _, cfg in generate_variants(space)]
    assert len(trials) == 5 * 3 * 2
    for cfg in trials:
        cell = cfg["cell"]
        lo, hi = FAMILY_BRACKETS[family[cell["schedule"]]]
        assert cell["lr_bracket"] == [lo, hi] and lo <= cell["lr"] <= hi, cfg
    lrs = {s: sorted({t["cell"]["lr"] for t in trials if t["cell"]["schedule"] == s}) for s in schedules}
    assert all(len(v) == 3 for v in lrs.values()), "3 LRs per schedule, each tried with AMP off and on"
    again, _ = search_space(FAMILY_BRACKETS, schedules, [False, True], ["resnet18"], force=True, num_samples=3, seed=4)
    assert again["cell"] == space["cell"], "the same sweep draws the same LRs (a restored tune keeps them)"


def test_schedule_brackets_one_for_all_by_family_or_by_schedule():
    assert schedule_brackets([1e-3, 1e-2], ["sgd", "adam"]) == {"sgd": (1e-3, 1e-2), "adam": (1e-3, 1e-2)}
    assert schedule_brackets({"sgd": (1, 2), "sgdr": (3, 4)}, ["sgd", "sgdr"]) == {"sgd": (1, 2), "sgdr": (3, 4)}
    with pytest.raises(ValueError, match=r"no LR bracket for schedule\(s\) \['adam'\]"):
        schedule_brackets({"sgd": (1e-3, 1e-2)}, ["sgd", "adam"])
    with pytest.raises(ValueError, match="invalid LR bracket"):
        schedule_brackets((1e-2, 1e-3), ["sgd"])
    with pytest.raises(ValueError, match="unknown schedule"):
        schedule_brackets((1e-3, 1e-2), ["cosine"])


def _judged_epochs(variant: str, epochs: int) -> tuple[list[int], list[str]]:
    """Epochs at which ASHA records a result of a trial of ``variant`` at one of its rungs (the
    trial reporting CLOCK as CycleEndScore computes it), and ASHA's decision on each epoch."""
    scheduler = asha_scheduler(epochs)
    scheduler.set_search_properties(SCORE, "max")
    trial = SimpleNamespace(trial_id=variant)
    scheduler.on_trial_add(None, trial)
    bracket = scheduler._trial_info[trial.trial_id]
    ends, judged, actions = cycle_end_epochs(variant, epochs), [], []
    for epoch in range(1, epochs + 1):
        before = sum(len(recorded) for _, recorded in bracket._rungs)
        clock = max(e for e in ends if e <= epoch) + 1
        actions.append(scheduler.on_trial_result(None, trial, {CLOCK: clock, SCORE: 0.5}))
        if sum(len(recorded) for _, recorded in bracket._rungs) > before:
            judged.append(epoch)
    return judged, actions


@pytest.mark.parametrize("variant", ["sgd", "adam", "sgdr", "sgdr_dlr", "sgdr_dlr_clm"])
def test_asha_judges_every_variant_at_the_same_cycle_ends_before_its_last_epoch(variant):
    # rungs at clock 2, 4, 8 = epochs 1, 3, 7; the last epoch is never a rung: the trial ends itself
    for epochs, expected in ((15, [1, 3, 7]), (7, [1, 3]), (3, [1]), (2, [1])):
        judged, actions = _judged_epochs(variant, epochs)
        assert judged == expected and set(actions) == {"CONTINUE"}, (epochs, judged, actions)
    assert asha_scheduler(1) is None, "nothing to prune in a one-epoch sweep"


def test_the_sweep_budget_is_whole_cycles_of_every_schedule():
    assert sweep_epochs(["sgd", "sgdr"], 5) == (5, None)
    epochs, note = sweep_epochs(["sgd", "sgdr_dlr_clm"], 5)
    assert epochs == 3 and note.startswith("sweep of 5 epochs: every trial trains 3 (sgdr_dlr_clm:")


def test_an_interrupted_tune_says_so_and_how_to_resume_it(monkeypatch):
    import ray.tune

    saved_statuses = []  # as the experiment state on storage records them
    monkeypatch.setattr(
        ray.tune,
        "ExperimentAnalysis",
        lambda path, storage_filesystem=None: SimpleNamespace(
            trials=[SimpleNamespace(status=s) for s in saved_statuses]
        ),
    )

    def grid(*results):
        return type("Grid", (list,), {"experiment_path": "/x/t-x", "filesystem": None})(results)

    def result(done=None, error=None):
        return SimpleNamespace(
            error=error, metrics={"training_iteration": 2} | ({} if done is None else {"done": done})
        )

    # finished or stopped by ASHA in this run (done) or failed: nothing to say, nothing read
    _raise_if_interrupted(grid(result(done=True), result(error=RuntimeError("x"))), "t-x")
    # without `done` (restored, or interrupted): the saved state tells
    saved_statuses[:] = ["TERMINATED", "TERMINATED"]
    _raise_if_interrupted(grid(result(done=True), result()), "t-x")
    saved_statuses[:] = ["TERMINATED", "RUNNING"]
    with pytest.raises(TuneInterrupted, match=r"1 of 2 trials unfinished; .*resume it with `skinflow tune --name t-x`"):
        _raise_if_interrupted(grid(result(done=True), result(done=False)), "t-x")
    assert issubclass(TuneInterrupted, KeyboardInterrupt), "the CLI and MLflow runs treat it as Ctrl-C"
