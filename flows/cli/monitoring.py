"""Monitoring verbs: ``drift``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli import render
from flows.cli.errors import EXIT_FINDINGS, fail
from flows.cli.options import config_option
from flows.cli.runner import build, check_policies, run_flow
from ml.monitor.config import MonitorConfig

verbs = typer.Typer()
"""Top-level verbs of this area."""


@verbs.command("drift")
def drift(
    batch: Annotated[
        str | None,
        typer.Argument(
            help="Batch: ImageFolder (SD-198 layout), unlabelled folder, CSV or s3:// prefix "
            "(default: monitor.batch of the project file)."
        ),
    ] = None,
    class_map: Annotated[str | None, config_option(MonitorConfig, "class_map")] = None,
    model: Annotated[str | None, config_option(MonitorConfig, "model_uri", "--model")] = None,
    reference: Annotated[str | None, config_option(MonitorConfig, "reference")] = None,
    reference_version: Annotated[str | None, config_option(MonitorConfig, "reference_version")] = None,
    reference_class_map: Annotated[str | None, config_option(MonitorConfig, "reference_class_map")] = None,
    max_reference: Annotated[int | None, config_option(MonitorConfig, "max_reference")] = None,
    policy: Annotated[Path | None, typer.Option(help="Drift policy YAML (default policies/drift.yaml).")] = None,
    apprise_secret: Annotated[str | None, config_option(MonitorConfig, "apprise_secret")] = None,
    out: Annotated[str | None, config_option(MonitorConfig, "out_dir", "--out")] = None,
    workspace: Annotated[str | None, config_option(MonitorConfig, "workspace")] = None,
    fail_on_drift: Annotated[
        bool, typer.Option("--fail-on-drift", help="Exit 1 when the batch drifted (CI use).")
    ] = False,
):
    """Compare a batch with the monitored model's reference (Evidently report, BBSE priors); on
    drift write the alert, emit skinflow.drift.detected and notify. Exit 1 on drift with
    --fail-on-drift."""
    cfg = build(
        MonitorConfig,
        batch=batch,
        class_map=class_map,
        model_uri=model,
        reference=reference,
        reference_version=reference_version,
        reference_class_map=reference_class_map,
        max_reference=max_reference,
        policy=str(policy) if policy else None,
        apprise_secret=apprise_secret,
        out_dir=out,
        workspace=workspace,
    )
    if not cfg.batch:
        fail("no batch to check: name one (skinflow drift BATCH) or set monitor.batch in the project file")
    if "://" not in cfg.batch and not Path(cfg.batch).exists():
        fail(f"batch {cfg.batch} does not exist")
    check_policies(drift=policy)
    from flows.monitor import monitor_flow

    summary = run_flow(monitor_flow, monitor=cfg)
    render.drift(summary)
    if fail_on_drift and summary["verdict"] == "drift":
        raise typer.Exit(EXIT_FINDINGS)
