"""What a sweep's trials came to (:mod:`ml.train.sweep`): one row per trial with its outcome, the
best trial, and whether Tune was interrupted before every trial finished."""

from __future__ import annotations

import logging

from ml.train.sweep_trial import METRIC, SCORE, outcome_of

Log = logging.Logger | logging.LoggerAdapter
logger = logging.getLogger(__name__)


class TuneInterrupted(KeyboardInterrupt):
    """The tune was stopped (Ctrl-C) before its trials finished; Tune saved its state."""


def _raise_if_interrupted(grid, name: str, log: Log | None = None) -> None:
    """Tune returns normally from a Ctrl-C, and marks every trial TERMINATED as it stops them. A
    trial that finished in this run, or that the scheduler stopped, has ``done`` in its last
    result; for any other (interrupted, or restored already finished) the experiment state Tune
    saved before stopping tells."""
    maybe = [r for r in grid if r.error is None and not (r.metrics or {}).get("done")]
    if not maybe:
        return
    from ray.tune import ExperimentAnalysis

    saved = ExperimentAnalysis(grid.experiment_path, storage_filesystem=grid.filesystem).trials
    unfinished = [t for t in saved if t.status not in ("TERMINATED", "ERROR")]
    if not unfinished:
        return
    message = (
        f"tune {name!r} was interrupted with {len(unfinished)} of {len(saved)} trials unfinished; its "
        f"state is saved: resume it with `skinflow tune --name {name}` and the same options"
    )
    (log or logger).warning(message)
    raise TuneInterrupted(message)


def _history(result) -> list[dict[str, float]]:
    """Per-epoch ``val_balanced_accuracy``, the cycle-end score and ``epoch_seconds`` a trial reported."""
    df = result.metrics_dataframe
    if df is None or df.empty or METRIC not in df or "epoch_seconds" not in df:
        return []
    scores = df[SCORE] if SCORE in df else [None] * len(df)
    return [
        {METRIC: float(a), SCORE: None if c is None else float(c), "epoch_seconds": float(b)}
        for a, c, b in zip(df[METRIC], scores, df["epoch_seconds"])
    ]


def _error_line(error: BaseException) -> str:
    """The root cause of a trial's error in one line (Ray wraps it in a long traceback)."""
    lines = [ln.strip() for ln in str(error).strip().splitlines() if ln.strip()]
    return f"{type(error).__name__}: {lines[-1] if lines else ''}"[:400]


def trial_outcome(result) -> str:
    """``error``, ``stopped_early`` or ``completed`` (:func:`ml.train.sweep_trial.outcome_of`) of
    a Tune result: what the trial's run is tagged (``trial_outcome``)."""
    return outcome_of(result.metrics or {}, result.config or {}, failed=result.error is not None)


def summarize_grid(grid) -> dict:
    """Best trial (by :data:`SCORE`) + one row per trial with its ``outcome``
    (:func:`trial_outcome`; errored trials are listed, not hidden)."""
    trials = []
    for r in grid:
        config = dict(r.config or {})
        cfg = {**config.pop("cell", {}), **{k: v for k, v in config.items() if not k.startswith("_")}}
        m = r.metrics or {}
        trials.append(
            {
                "trial": r.path.rsplit("/", 1)[-1] if r.path else None,
                **cfg,
                SCORE: m.get(SCORE),
                METRIC: m.get(METRIC),
                "val_macro_f1": m.get("val_macro_f1"),
                "epochs": m.get("training_iteration"),
                "outcome": trial_outcome(r),
                "mlflow_run_id": m.get("mlflow_run_id"),
                "node_id": m.get("node_id"),
                "error": None if r.error is None else _error_line(r.error),
                "history": _history(r),
            }
        )
    ok = [t for t in trials if t["error"] is None and t[SCORE] is not None]
    if not ok:
        raise RuntimeError("every Ray Tune trial failed: " + "; ".join(str(t["error"]) for t in trials))
    best = max(ok, key=lambda t: t[SCORE])
    return {"best": best, "trials": trials, "failed": [t for t in trials if t["error"]]}
