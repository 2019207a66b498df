"""``skinflow stack up|down|status``: the local service stack (``infra/stack.sh``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli.errors import fail

group = typer.Typer(help="Start/stop the local service stack (S3, MLflow, Prefect, worker).", no_args_is_help=True)
"""``skinflow stack ...``"""

STACK_SH = Path(__file__).resolve().parents[2] / "infra" / "stack.sh"


@group.command("up")
def stack_up(
    db: Annotated[
        str,
        typer.Option(
            "--db",
            help="sqlite (one worker) or postgres (the team topology: PostgreSQL, "
            "two-node Ray, two workers; infra/README.md).",
        ),
    ] = "sqlite",
):
    """Start moto S3, MLflow server, Prefect server and process worker(s) on 127.0.0.1."""
    if db not in ("sqlite", "postgres"):
        fail(f"--db must be sqlite or postgres, not {db!r}")
    _stack("up", "--db", db)


@group.command("down")
def stack_down():
    """Stop everything `stack up` started."""
    _stack("down")


@group.command("status")
def stack_status():
    """Show which stack services run and their URLs."""
    _stack("status")


def _stack(*args: str) -> None:
    import subprocess

    raise typer.Exit(subprocess.call(["bash", str(STACK_SH), *args]))
