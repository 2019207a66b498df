"""Project verb: ``init`` writes the project file (ml/project.py) that every verb and deployment reads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli.errors import fail

verbs = typer.Typer()
"""Top-level verbs of this area."""


@verbs.command("init")
def init(
    data: Annotated[str, typer.Option("--data", help="Your dataset: ImageFolder dir, CSV manifest or s3:// prefix.")],
    out: Annotated[
        Path | None,
        typer.Option(help="Project file to write (default: SKINFLOW_PROJECT_FILE, else skinflow.yaml here)."),
    ] = None,
    batch: Annotated[str | None, typer.Option(help="Where new images land, for drift checks.")] = None,
    registered_model: Annotated[str | None, typer.Option(help="MLflow registered model name.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing project file.")] = False,
):
    """Write a project file for DATA: the pretrained recipe for photographs, the demo's for the demo
    set, each value with its reason. Every verb, the demo and every deployment then read it."""
    from ml.data.manifest import check_source
    from ml.project import is_demo_set, project_path, propose
    from ml.storage import atomic_write

    target = out or project_path()[0]
    if target.exists() and not force:
        fail(f"{target} exists: edit it, or pass --force to replace it")
    if "://" not in data:
        try:
            check_source(data)
        except (ValueError, OSError) as exc:
            fail(str(exc))
    text = propose(data, registered_model=registered_model, batch=batch)
    atomic_write(target, text.encode())
    recipe = "the demo's recipe (synthetic set)" if is_demo_set(data) else "the pretrained recipe (photographs)"
    typer.echo(f"wrote {target}: {data} with {recipe}; every verb and deployment now reads it")
