"""MLflow tracking and registry (no Prefect): runs, params, artifacts, models, aliases."""
