"""Prefect flows (and the ``skinflow`` CLI). Importing the package redacts every log record the
process creates (``ml.settings.install_log_redaction``), in the CLI and in worker-run flows alike."""

from ml.settings import install_log_redaction

install_log_redaction()
