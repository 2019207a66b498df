# skinflow: `make demo` runs the main job, `make test` runs the suite. Both install what is missing.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.skinflow-installed
export OMP_NUM_THREADS ?= 2

.PHONY: install demo test test-fast bench bench-train bench-overhead bench-features bench-gpu stack-up stack-down stack-status clean postgres stack-up-team bench-load

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the declared dependencies change (idempotent).
$(STAMP): pyproject.toml constraints.txt | $(PY)
	$(PY) -m pip install --disable-pip-version-check -q -c constraints.txt -e '.[dev]'
	touch $@

install: $(STAMP)

demo: install
	$(VENV)/bin/skinflow demo $(DEMO_ARGS)

test: install postgres
	$(PY) -m pytest -q -ra $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -q -ra tests/unit

bench: bench-train bench-overhead bench-features

bench-train: install
	$(PY) bench/bench_train.py $(BENCH_ARGS)

bench-overhead: install
	$(PY) bench/bench_overhead.py --results bench/RESULTS.md $(BENCH_ARGS)

bench-features: install
	$(PY) bench/bench_features.py --results bench/RESULTS.md $(BENCH_ARGS)

# On a CUDA machine, no install step (no network there): gpu-marked tests + bench/bench_gpu.py -> $(OUT) or bench/out/gpu.
bench-gpu:
	bash bench/gpu_check.sh

stack-up: install
	bash infra/stack.sh up

# The team topology (PostgreSQL, two-node Ray, two workers) on this machine: infra/README.md.
stack-up-team: install postgres
	bash infra/stack.sh up --db postgres

# PostgreSQL server binaries for the postgres profile and its tests (installs Debian's package when missing).
postgres:
	bash infra/ensure_postgres.sh

# 20 short flow runs through two workers, sqlite and Postgres back ends -> bench/RESULTS.md (infra/README.md).
bench-load: install postgres
	$(PY) bench/bench_load.py --results bench/RESULTS.md $(BENCH_ARGS)

stack-down:
	bash infra/stack.sh down

stack-status:
	bash infra/stack.sh status

clean:
	rm -rf data/demo mlruns mlartifacts .pytest_cache
