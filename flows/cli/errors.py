"""Exit codes and the one line a user sees for an error.

Classifying an error imports nothing: an exception can only be an instance of a class whose
module is already imported, so each known class is looked up in ``sys.modules`` and a module
that is not there is skipped. A user's mistake (a missing path, a bad CSV) is then answered in
the time the verb took, not after MLflow and Prefect were imported to compare types."""

from __future__ import annotations

import sys

import typer

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE, EXIT_SERVICE, EXIT_INTERNAL = 0, 1, 2, 3, 4

FINDINGS = ("flows.validate:ValidationFailed",)
SERVICE = ("ml.tracking.runs:ServiceUnavailableError",)
STORAGE = ("ml.storage:StorageError",)
USER_PATH = ("ml.storage:LocalPathError",)
INVALID = ("pydantic_core:ValidationError", "prefect.exceptions:ParameterTypeError")
CLICK = ("click.exceptions:ClickException", "typer._click.exceptions:ClickException")
"""``module:Class`` names; typer 0.29 carries its own copy of click (``typer._click``)."""


def loaded_types(*names: str) -> tuple[type, ...]:
    """The classes ``module:Class`` among ``names`` whose module is already imported."""
    found = []
    for name in names:
        module, _, attr = name.partition(":")
        cls = getattr(sys.modules.get(module), attr, None)
        if isinstance(cls, type):
            found.append(cls)
    return tuple(found)


def is_click_error(exc: BaseException) -> bool:
    """A usage error click raised while parsing (no such option, missing argument, bad value)."""
    return isinstance(exc, loaded_types(*CLICK))


def fail(msg: str, code: int = EXIT_USAGE) -> None:
    """One red ``error:`` line on stderr, then exit ``code``."""
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def classify(exc: BaseException) -> tuple[int, str]:
    """Exit code and the one line a user sees for an exception a verb raised."""
    if isinstance(exc, loaded_types(*FINDINGS)):
        return EXIT_FINDINGS, str(exc)
    if isinstance(exc, loaded_types(*USER_PATH)):  # a path the user gave: read-only, too long, ...
        return EXIT_USAGE, str(exc)
    storage = loaded_types(*STORAGE)
    if isinstance(exc, (*loaded_types(*SERVICE), ConnectionError, TimeoutError)) or (
        isinstance(exc, storage) and not isinstance(exc, FileNotFoundError)
    ):
        return EXIT_SERVICE, str(exc)
    if isinstance(exc, loaded_types(*INVALID)):
        return EXIT_USAGE, " ".join(str(exc).split())
    if isinstance(exc, (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)):
        return EXIT_USAGE, str(exc)
    return EXIT_INTERNAL, f"{type(exc).__name__}: {exc} (rerun with --debug for the traceback)"
