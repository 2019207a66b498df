"""The sweep's pure parts: per-family LR brackets in the search space, ASHA judging only at cycle
ends, whole-cycle budgets, and what an interrupted tune says (no Ray cluster started)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ml.train.schedules import cycle_end_epochs
from ml.train.sweep import (
    CLOCK,
    SCORE,
    TuneInterrupted,
    asha_scheduler,
    schedule_brackets,
    search_space,
    sweep_epochs,
)
from ml.train.sweep_results import _raise_if_interrupted

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


class _Trial:
    """What the progress callback reads of a Tune trial."""

    def __init__(self, index: int, status: str = "RUNNING", score: float | None = None):
        self.trial_id, self.status = f"ab12c_{index:05d}", status
        self.last_result = {} if score is None else {SCORE: score}

    def __str__(self) -> str:
        return f"run_trial_{self.trial_id}"


def test_sweep_progress_counts_ended_trials_and_the_best_score_without_ray_running():
    import pickle

    from ml.train.sweep_callbacks import SweepProgress, progress_line, reporting_to

    heard = []
    callback = SweepProgress("t-progress", total=4)
    trials = [_Trial(0, "TERMINATED", 0.4), _Trial(1, score=0.5), _Trial(2, score=0.7), _Trial(3)]
    callback.on_trial_complete(0, trials, trials[1])  # nobody listens yet: nothing, no error
    with reporting_to("t-progress", lambda *progress: heard.append(progress)):
        callback.on_trial_complete(0, trials, trials[1])  # Tune sets the status after its callbacks
        trials[1].status = "TERMINATED"
        callback.on_trial_error(0, trials, trials[2])  # a failed trial's score is not the best
        trials[2].status = "ERROR"
        trials[3].last_result = {SCORE: 0.61}
        callback.on_trial_complete(0, trials, trials[3])
    callback.on_trial_complete(0, trials, trials[3])  # the sweep is over: nobody listens
    assert heard == [(2, 4, 0.5, "1"), (3, 4, 0.5, "1"), (4, 4, 0.61, "3")]
    assert (
        progress_line(2, 4, 0.61, "3") == "sweep: 2/4 trials done, best val_ensemble_balanced_accuracy 0.61 (trial 3)"
    )
    assert progress_line(1, 4, None, "") == "sweep: 1/4 trials done, no val_ensemble_balanced_accuracy yet"
    # Tune pickles its callbacks with the experiment: the caller's function is not in there
    restored = pickle.loads(pickle.dumps(callback))
    assert vars(restored) == {"experiment": "t-progress", "total": 4}


def _result(epoch: int | None, budget: int = 7, error: BaseException | None = None, score: float = 0.5):
    metrics = {} if epoch is None else {"epoch": epoch, "training_iteration": epoch, SCORE: score, "done": True}
    return SimpleNamespace(
        config={
            "cell": {"schedule": "sgdr", "lr": 0.01, "lr_bracket": [1e-3, 1e-1]},
            "amp": False,
            "_base": {"epochs": budget},
        },
        metrics=metrics,
        error=error,
        path=f"/x/run_trial_{epoch}",
        metrics_dataframe=None,
    )


def test_summary_rows_say_whether_a_trial_completed_stopped_early_or_failed():
    from ml.train.sweep import summarize_grid

    summary = summarize_grid([_result(7), _result(3, score=0.9), _result(1, error=RuntimeError("boom"))])
    assert [t["outcome"] for t in summary["trials"]] == ["completed", "stopped_early", "error"]
    assert summary["best"]["outcome"] == "stopped_early" and summary["failed"][0]["outcome"] == "error"


def _trial_config(recorder, epochs: int = 3) -> dict:
    return {
        "cell": {"schedule": "sgd", "lr": 0.01, "lr_bracket": [1e-3, 1e-1]},
        "amp": False,
        "arch": "resnet18",
        "_base": {"batch_size": 4, "snapshots": 0, "epochs": epochs, "seed": 0, "checkpoint_interval_s": 0},
        "_cpus": 1,
        "_recorder": recorder,
    }


def test_a_trial_asha_stopped_ends_finished_and_tagged_stopped_early(tmp_path, monkeypatch):
    """The trial body against a real MLflow store, with Ray's trial context and fit stood in:
    ASHA's stop (SystemExit from tune.report) ends the run FINISHED, not FAILED or KILLED."""
    import mlflow
    import numpy as np
    import pandas as pd
    import ray
    import ray.tune

    import ml.train.loop
    from ml.tracking.trials import MlflowTrials
    from ml.train.sweep import TrialData, run_trial

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("t", artifact_location=(tmp_path / "artifacts").as_uri())
    client = mlflow.MlflowClient()
    parent = client.create_run(experiment).info.run_id
    recorder = MlflowTrials(uri, experiment, parent)
    images = np.zeros((4, 8, 8, 3), np.uint8)
    labels = np.array([0, 1, 0, 1])
    data = TrialData((images, labels), (images, labels), ["a", "b"], "v" * 64, "cache", pd.DataFrame({"n": [4]}))

    trial = {"name": ""}
    monkeypatch.setattr(ray.tune, "get_checkpoint", lambda: None)
    monkeypatch.setattr(ray.tune, "get_context", lambda: SimpleNamespace(get_trial_name=lambda: trial["name"]))
    monkeypatch.setattr(ray, "get_runtime_context", lambda: SimpleNamespace(get_node_id=lambda: "node-1"))

    def fake_fit(train, val, classes, cfg, callbacks, fetch_weights=None):
        for epoch in range(1, cfg.epochs + 1):
            row = {"epoch": epoch, "train_loss": 1.0, "val_balanced_accuracy": 0.5, "epoch_seconds": 0.1}
            for cb in callbacks:
                cb.on_epoch_end(epoch, row, SimpleNamespace(checkpoint_epoch=None))
        return SimpleNamespace(stopped_early=False)

    def stop_at(epoch_to_stop):
        def report(result, checkpoint=None):
            if result["epoch"] == epoch_to_stop:
                raise SystemExit(0)  # what tune.report does once the scheduler stopped the trial

        return report

    monkeypatch.setattr(ml.train.loop, "fit", fake_fit)
    monkeypatch.setattr(ray.tune, "report", stop_at(1))
    trial["name"] = "run_trial_ab12c_00000"
    with pytest.raises(SystemExit):
        run_trial(_trial_config(recorder), data)
    monkeypatch.setattr(ray.tune, "report", stop_at(None))
    trial["name"] = "run_trial_ab12c_00001"
    run_trial(_trial_config(recorder), data)

    def boom(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(ml.train.loop, "fit", boom)
    trial["name"] = "run_trial_ab12c_00002"
    with pytest.raises(RuntimeError):
        run_trial(_trial_config(recorder), data)

    runs = {r.data.tags["trial"]: r for r in client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent}'")}
    stopped, completed, failed = (runs[f"run_trial_ab12c_0000{i}"] for i in range(3))
    assert stopped.info.status == "FINISHED", "a pruned trial is no failure in the runs table"
    assert stopped.data.tags["stopped_by"] == "scheduler" and stopped.data.tags["trial_outcome"] == "stopped_early"
    assert stopped.data.metrics["val_balanced_accuracy"] == 0.5 and stopped.info.run_name.endswith("#0 [trial]")
    assert completed.info.status == "FINISHED" and completed.data.tags["trial_outcome"] == "completed"
    assert "stopped_by" not in completed.data.tags
    assert failed.info.status == "FAILED" and failed.data.tags["trial_outcome"] == "error"
    assert mlflow.active_run() is None, "every trial's run was ended"

    # Tune may end a stopped trial's process before the trial ends its run: the driver closes it
    left_open = client.create_run(experiment).info.run_id
    recorder.close(left_open, "stopped_early", stopped_by="scheduler")
    closed = client.get_run(left_open)
    assert closed.info.status == "FINISHED" and closed.data.tags["stopped_by"] == "scheduler"
    assert closed.data.tags["trial_outcome"] == "stopped_early"
    recorder.close(failed.info.run_id, "stopped_early", stopped_by="scheduler")
    assert client.get_run(failed.info.run_id).info.status == "FAILED", "a closed run is left as it ended"


def test_the_driver_closes_the_run_of_a_trial_asha_stopped_only():
    from ml.train.sweep_callbacks import CloseStoppedRuns

    closed = []
    recorder = SimpleNamespace(
        close=lambda run_id, outcome, stopped_by=None: closed.append((run_id, outcome, stopped_by))
    )

    def trial(epoch: int):
        return SimpleNamespace(
            last_result={"epoch": epoch, "mlflow_run_id": f"run-{epoch}", "done": True},
            config={"_base": {"epochs": 3}, "_recorder": recorder},
        )

    callback = CloseStoppedRuns()
    for epoch in (1, 3):
        callback.on_trial_complete(0, [], trial(epoch))
    assert closed == [("run-1", "stopped_early", "scheduler")], "a trial at its budget closed its own run"
