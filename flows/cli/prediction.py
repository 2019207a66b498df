"""Prediction verb: ``predict``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli import render
from flows.cli.errors import fail
from flows.cli.options import config_option
from flows.cli.runner import build, run_flow
from ml.predict.config import PredictConfig

verbs = typer.Typer()
"""Top-level verbs of this area."""


@verbs.command("predict")
def predict(
    source: Annotated[str, typer.Argument(help="Images: a folder, a CSV with a 'path' column, or an s3:// prefix.")],
    model: Annotated[str | None, config_option(PredictConfig, "model_uri", "--model")] = None,
    out: Annotated[str | None, config_option(PredictConfig, "out")] = None,
    top_k: Annotated[int | None, config_option(PredictConfig, "top_k")] = None,
    allow_outside_root: Annotated[bool | None, config_option(PredictConfig, "allow_outside_root", flag=True)] = None,
    explain: Annotated[str | None, config_option(PredictConfig, "explain")] = None,
):
    """Predict every image of SOURCE with the registered model (default: its champion): one row
    per file (probabilities, top labels; files left out with their reason) in a CSV or Parquet
    table, an MLflow run (skinflow-predict) and a Prefect artifact."""
    cfg = build(
        PredictConfig,
        source=source,
        model_uri=model,
        out=out,
        top_k=top_k,
        allow_outside_root=allow_outside_root,
        explain=explain,
    )
    if not cfg.out.endswith((".csv", ".parquet")):
        fail(f"--out {cfg.out}: the table is written as .csv or .parquet")
    if "://" not in source and not Path(source).exists():
        fail(f"{source} does not exist")
    from flows.predict import predict_flow

    summary = run_flow(predict_flow, predict=cfg)
    render.echo_json(summary)
