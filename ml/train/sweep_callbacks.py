"""The sweep's Tune callbacks, on the driver (public ``ray.tune.Callback``; this module imports
Ray, and the sweep imports it only when it runs).

- Progress: after each trial ends (completed, stopped by ASHA or failed) a user function
  ``on_progress(done, total, best, trial)`` hears how many of the grid's trials are done, the
  best :data:`~ml.train.sweep_trial.SCORE` of those done (failed ones aside) and the trial that
  holds it (its index, as in the trial's run name): :class:`SweepProgress`.
- Stopped trials' runs: Tune stops a trial ASHA pruned by stopping its actor, and the actor's
  process may end before the trial has ended its run; :class:`CloseStoppedRuns` ends it from
  the driver (FINISHED, ``trial_outcome=stopped_early``, ``stopped_by=scheduler``) through the
  trial's recorder when it is still open.

Tune pickles its callbacks with the experiment (``tuner.pkl``) and a restored tune runs with the
unpickled ones, so the callbacks hold no function of their caller: ``on_progress`` is registered
for the experiment while it runs (:func:`reporting_to`), and the callback of a restored tune
finds the current caller's function there. Counts come from Tune's trial list at each event, so
a restored tune counts the trials finished before too."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from ray.tune import Callback

from ml.train.sweep_trial import SCORE, STOPPED_EARLY, outcome_of, trial_index

ProgressFn = Callable[[int, int, "float | None", str], None]

_ENDED = ("TERMINATED", "ERROR")  # Trial.TERMINATED, Trial.ERROR
_SINKS: dict[str, ProgressFn] = {}
logger = logging.getLogger(__name__)


def progress_of(trials: Iterable[Any], ended: Any = None, failed: bool = False) -> tuple[int, float | None, str]:
    """``(done, best, trial)`` over Tune's ``trials`` when ``ended`` has just ended (Tune
    changes its status only after telling the callbacks; ``failed``: it errored): trials done,
    the best score of a done trial that did not fail (its last result, as the sweep's summary
    ranks it; None before any) and that trial's index ("" without a best)."""
    trials = list(trials)
    now = ended.trial_id if ended is not None else None
    done = {t.trial_id for t in trials if t.status in _ENDED or t.trial_id == now}
    best, holder = None, ""
    for t in trials:
        if t.trial_id not in done or t.status == "ERROR" or (failed and t.trial_id == now):
            continue
        value = (t.last_result or {}).get(SCORE)
        if value is not None and (best is None or value > best):
            best, holder = float(value), trial_index(str(t))
    return len(done), best, holder


def progress_line(done: int, total: int, best: float | None, trial: str) -> str:
    """``sweep: 2/4 trials done, best val_ensemble_balanced_accuracy 0.61 (trial 3)``."""
    head = f"sweep: {done}/{total} trials done"
    return head + (f", best {SCORE} {best:.2f} (trial {trial})" if best is not None else f", no {SCORE} yet")


@contextmanager
def reporting_to(experiment: str, on_progress: ProgressFn | None) -> Iterator[None]:
    """``on_progress`` hears the progress of ``experiment``'s :class:`SweepProgress` while this
    lasts."""
    if on_progress is None:
        yield
        return
    _SINKS[experiment] = on_progress
    try:
        yield
    finally:
        _SINKS.pop(experiment, None)


class SweepProgress(Callback):
    """Calls the function registered for ``experiment`` (:func:`reporting_to`) with
    ``(done, total, best, trial)`` after each trial of the ``total`` ends."""

    def __init__(self, experiment: str, total: int) -> None:
        self.experiment = experiment
        self.total = total

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info) -> None:
        self._tell(trials, trial, failed=False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info) -> None:
        self._tell(trials, trial, failed=True)

    def _tell(self, trials: list, trial: Any, failed: bool) -> None:
        on_progress = _SINKS.get(self.experiment)
        if on_progress is None:
            return
        done, best, holder = progress_of(trials, trial, failed)
        try:
            on_progress(done, self.total, best, holder)
        except Exception:  # a progress line is not worth the sweep
            logger.warning("sweep progress report failed", exc_info=True)


class CloseStoppedRuns(Callback):
    """Ends the run of a trial ASHA stopped (its last epoch before the budget) through the
    recorder in the trial's config, if the trial left it open; a trial that ended by itself has
    closed its run already (the recorder then does nothing)."""

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info) -> None:
        result, config = trial.last_result or {}, trial.config or {}
        run_id, recorder = result.get("mlflow_run_id"), config.get("_recorder")
        if run_id is None or recorder is None or outcome_of(result, config) != STOPPED_EARLY:
            return
        try:
            recorder.close(run_id, STOPPED_EARLY, stopped_by="scheduler")
        except Exception:  # the trial's own end may still close it; the sweep goes on
            logger.warning("could not close the run %s of stopped trial %s", run_id, trial, exc_info=True)
