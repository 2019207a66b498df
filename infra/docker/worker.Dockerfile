# Prefect process worker with skinflow installed (build context: the repository root).
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends git && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/skinflow
COPY pyproject.toml README.md ./
COPY ml ml
COPY tasks tasks
COPY flows flows
COPY infra infra
COPY policies policies
RUN pip install --no-cache-dir -e .
