"""The ``skinflow`` command line (typer): the app, its verbs by area, and the console script's
error handling and exit codes.

- :mod:`flows.cli.options`: the shared options, each declared once (``Annotated`` aliases);
- :mod:`flows.cli.runner`: options -> config objects -> a flow run (Prefect starts only there);
- :mod:`flows.cli.render`: what the verbs print;
- :mod:`flows.cli.errors`: exit codes and the one line an error becomes (no heavy imports);
- one module of verbs per area: :mod:`~flows.cli.project`, :mod:`~flows.cli.data`, :mod:`~flows.cli.training`,
  :mod:`~flows.cli.monitoring`, :mod:`~flows.cli.prediction`, :mod:`~flows.cli.analysis`, :mod:`~flows.cli.stack`.

Importing the CLI imports typer and the config classes only: ``--help`` (of the app or of any
verb), a mistyped option and a refused value import no Prefect, MLflow or torch and write no file."""

from __future__ import annotations

import sys

import typer
from typer.core import TyperGroup

from flows.cli import analysis, data, monitoring, prediction, project, stack, training
from flows.cli.errors import (
    EXIT_FINDINGS,
    EXIT_INTERNAL,
    EXIT_OK,
    EXIT_SERVICE,
    EXIT_USAGE,
    classify,
    is_click_error,
)

__all__ = ["EXIT_FINDINGS", "EXIT_INTERNAL", "EXIT_OK", "EXIT_SERVICE", "EXIT_USAGE", "app", "main"]

_HELP = """skinflow: rapid, robust fine-tuning workflows for small long-tailed image sets.

Exit codes: 0 ok; 1 critical findings (validation failures); 2 usage or input errors (one line,
no traceback); 3 a service (MLflow, S3, Prefect, Ray) did not answer after its retries; 4 an
unexpected error. --debug (anywhere on the line, or SKINFLOW_DEBUG=1) shows tracebacks."""

VERBS = (
    "init",
    "lr-find",
    "train",
    "pretrain",
    "tune",
    "retrain",
    "validate",
    "label-issues",
    "curation-ab",
    "robustness",
    "interpret",
    "augcheck",
    "demo",
    "drift",
    "predict",
    "data",
    "stack",
)
"""The order ``skinflow --help`` lists the verbs in (the areas are registered one module at a time)."""


INTERRUPTED = (
    "interrupted (exit 130): a flow run in progress is marked Crashed in Prefect; outputs are written whole "
    "or not at all, so what finished before the interrupt is kept and nothing half-written is left"
)
"""What Ctrl-C prints, once, instead of a traceback."""


class _Verbs(TyperGroup):
    """The root group: lists its verbs in :data:`VERBS` order."""

    def list_commands(self, ctx) -> list[str]:
        return sorted(super().list_commands(ctx), key=lambda n: VERBS.index(n) if n in VERBS else len(VERBS))


class _App(typer.Typer):
    """The console script calls ``app()``: that runs :func:`main` (one-line errors, exit codes,
    redaction); tests and other callers with arguments get typer's behaviour."""

    def __call__(self, *args, **kwargs):
        if args or kwargs:
            return super().__call__(*args, **kwargs)
        return main()


app = _App(cls=_Verbs, help=_HELP, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
for _area in (project, training, data, analysis, monitoring, prediction):
    app.add_typer(_area.verbs)
app.add_typer(data.group, name="data")
app.add_typer(stack.group, name="stack")


def _prefect_logs_without_tracebacks() -> None:
    """Prefect's engines log a failed task or flow run with its traceback; a user error then
    filled the screen with several. Outside --debug, records of Prefect's loggers keep their
    one-line message (the exception's repr) and drop the traceback; skinflow prints the error
    itself as one line. Applied through the log record factory, as Prefect attaches its
    handlers only when the first flow run starts (this imports nothing)."""
    import logging

    base = logging.getLogRecordFactory()

    def factory(*args, **kwargs):
        record = base(*args, **kwargs)
        if record.exc_info and record.name.startswith("prefect"):
            record.exc_info, record.exc_text = None, None
        return record

    logging.setLogRecordFactory(factory)


def _library_warnings_to_stderr() -> None:
    """skinflow's library (logger ``ml``) reports what it left out and why as warnings: shown on
    stderr as ``warning: ...`` lines."""
    import logging

    lib = logging.getLogger("ml")
    if not any(getattr(h, "_skinflow", False) for h in lib.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setLevel(logging.WARNING)
        handler.setFormatter(logging.Formatter("warning: %(message)s"))
        handler._skinflow = True
        lib.addHandler(handler)


def main(argv: list[str] | None = None) -> None:
    """The ``skinflow`` console script: the typer app, with user errors as one line and an exit
    code scripts can rely on (see ``skinflow --help``), secrets redacted from every log record.
    A usage error click finds while parsing (a mistyped option, a missing argument) is click's
    message with exit 2, before any verb runs."""
    import os
    import traceback

    from ml.settings import install_log_redaction, redact_text

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("SKINFLOW_DEBUG", "") not in ("", "0")
    args = [a for a in args if a != "--debug"]
    install_log_redaction()
    _library_warnings_to_stderr()
    if not debug:
        _prefect_logs_without_tracebacks()
    try:
        code = typer.Typer.__call__(app, args=args, prog_name="skinflow", standalone_mode=False)
        if code == 130:  # typer answers Ctrl-C with exit code 130 and no word
            typer.secho(INTERRUPTED, err=True)
    except typer.Exit as exc:
        code = exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        typer.secho(INTERRUPTED, err=True)
        code = 130
    except Exception as exc:
        if is_click_error(exc):
            exc.show()
            code = exc.exit_code
        else:
            code, line = classify(exc)
            if debug:
                traceback.print_exception(exc)
            typer.secho(f"error: {redact_text(line)}", fg=typer.colors.RED, err=True)
    sys.exit(code if isinstance(code, int) else 0)
