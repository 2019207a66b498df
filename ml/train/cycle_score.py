"""A run scored where it could stop whole, as the model it would hand over there.

A sweep compares trials of different schedules part-way through. Compared mid-cycle, or just
after a warm restart, a cyclic schedule looks worse than it is; and the model a run with
snapshots hands over is their ensemble, not its last weights. :class:`CycleEndScore` scores a
run only at the ends of its schedule's cycles (:func:`ml.train.schedules.cycle_end_epochs`)
and scores the model a run ending there would give: the mean softmax over the last
``snapshots`` cycle ends (step decay: the model itself, its only snapshot being its last
iteration), i.e. the validation probabilities :meth:`ml.train.loop.TrainResult.predict_proba`
gives that run (without TTA, like the epoch's own validation metrics). No weights are kept for
this: each cycle end's validation probabilities are.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ml.eval.metrics import classification_metrics
from ml.train.loop import Callback, TrainState
from ml.train.schedules import SINGLE_CYCLE, cycle_end_epochs


class CycleEndScore(Callback):
    """Balanced accuracy of the snapshot ensemble at each cycle end; held between cycle ends.

    After each epoch: ``at_cycle_end`` (this epoch ends a cycle), ``value`` (the score at the
    last cycle end), ``cycle_epoch`` (that epoch) and ``clock`` (``cycle_epoch + 1``: a counter
    that moves only at cycle ends, for ASHA's ``time_attr``). :meth:`save`/:meth:`load` carry it
    over an interrupted run, beside the run's checkpoint."""

    def __init__(self, val_labels: np.ndarray, snapshots: int) -> None:
        self.labels = np.asarray(val_labels)
        self.snapshots = snapshots
        self.probs: list[np.ndarray] = []  # validation probabilities at the last cycle ends kept
        self.value: float | None = None
        self.cycle_epoch = 0
        self.at_cycle_end = False
        self._ends: set[int] = set()
        self._window = 1

    @property
    def clock(self) -> int:
        return self.cycle_epoch + 1

    def ensemble_probs(self) -> np.ndarray:
        return np.mean(self.probs, axis=0)

    def on_train_begin(self, state: TrainState) -> None:
        cfg = state.cfg
        self._ends = set(cycle_end_epochs(cfg.schedule, cfg.epochs))
        self._window = 1 if cfg.schedule in SINGLE_CYCLE else max(1, self.snapshots)
        if state.epoch and self.value is None:  # resumed without a saved score: the last cycle end's own
            last = max((e for e in self._ends if e <= state.epoch), default=0)
            if last:
                self.cycle_epoch, self.value = last, float(state.history[last - 1]["val_balanced_accuracy"])

    def on_epoch_end(self, epoch: int, metrics: dict[str, float], state: TrainState) -> None:
        self.at_cycle_end = epoch in self._ends
        if not self.at_cycle_end:
            return
        self.probs = (self.probs + [state.val_probs])[-self._window :]
        metrics = classification_metrics(self.labels, self.ensemble_probs(), state.classes)
        self.value = float(metrics["balanced_accuracy"])
        self.cycle_epoch = epoch

    def save(self, path: str | Path) -> None:
        probs = np.stack(self.probs) if self.probs else np.zeros((0, 0))
        with open(path, "wb") as f:
            np.savez(
                f,
                probs=probs,
                value=np.float64(math.nan if self.value is None else self.value),
                cycle_epoch=np.int64(self.cycle_epoch),
            )

    def load(self, path: str | Path) -> None:
        with np.load(path, allow_pickle=False) as saved:
            self.probs = list(saved["probs"])
            value = float(saved["value"])
            self.value = None if math.isnan(value) else value
            self.cycle_epoch = int(saved["cycle_epoch"])
