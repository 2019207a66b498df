# skinflow: `make demo` runs the main job, `make test` runs the suite. Both install what is missing.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.skinflow-installed
export OMP_NUM_THREADS ?= 2

.PHONY: install demo lint test test-fast bench bench-train bench-overhead bench-features bench-large-jpeg bench-monitor bench-augcheck bench-gpu bench-pretrained bench-fastai bench-rapid bench-step bench-loop bench-label-issues bench-confounders stack-up stack-down stack-status clean postgres stack-up-team bench-load

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the declared dependencies change (idempotent).
$(STAMP): pyproject.toml constraints.txt | $(PY)
	$(PY) -m pip install --disable-pip-version-check -q -c constraints.txt -e '.[dev]'
	touch $@

install: $(STAMP)

demo: install
	$(VENV)/bin/skinflow demo $(DEMO_ARGS)

# The fast first stage of make test: ruff's linter and its formatter check (rules in pyproject.toml).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Three xdist workers with one BLAS thread each, on 2 cores: many tests wait on services (the
# zombie automation's 90 s, retries, server start-ups), and the third worker fills those waits
# (2026-12-07, 2-core EPYC: 14.1 min against 16.1 with two). Tests that share a stack or Ray run in
# one worker (tests/conftest.py, --dist loadgroup), so every service starts once per run.
PYTEST_WORKERS ?= 3
test: lint postgres
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -ra -n $(PYTEST_WORKERS) --dist loadgroup --durations=25 $(PYTEST_ARGS)

# The unit tests alone (pure, no services): about 2.5 minutes on 2 cores.
test-fast: lint
	$(PY) -m pytest -q -ra tests/unit

bench: bench-train bench-overhead bench-features

bench-train: install
	$(PY) -m bench.bench_train $(BENCH_ARGS)

bench-overhead: install
	$(PY) -m bench.bench_overhead --results bench/RESULTS.md $(BENCH_ARGS)

bench-features: install
	$(PY) -m bench.bench_features --results bench/RESULTS.md $(BENCH_ARGS)

# Table 5.8 on the synthetic default and isic9 (efficientnet_lite0, 128 px, bounded budget) + interpret on isic9.
.PHONY: bench-robustness
bench-robustness: install
	nice -n 10 $(PY) -m bench.bench_robustness $(BENCH_ARGS)
# monitor-flow seconds, 500 reference vs 100..1000 batch images at 64 px (single-threaded BLAS/OpenMP)
bench-monitor: install
	OMP_NUM_THREADS=1 $(PY) -m bench.bench_monitor --results bench/RESULTS.md $(BENCH_ARGS)
# Features on large JPEGs (1600x1100, made at bench time): full vs reduced (DCT-scaled) decode.
bench-large-jpeg: install
	$(PY) -m bench.bench_large_jpeg --results bench/RESULTS.md $(BENCH_ARGS)
# The augcheck flow end to end on the synthetic default (CPU profile; ~13 min of ProGAN on an idle 2-core machine).
bench-augcheck: install
	nice -n 10 $(PY) -m bench.bench_augcheck --results bench/RESULTS.md $(BENCH_ARGS)

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
	$(PY) -m bench.bench_load --results bench/RESULTS.md $(BENCH_ARGS)

stack-down:
	bash infra/stack.sh down

stack-status:
	bash infra/stack.sh status

clean:
	rm -rf data/demo mlruns mlartifacts .pytest_cache

# bench/bench_pretrained.py: ImageNet EfficientNet-Lite on isic9, 5 variants x {fp32, AMP} x 3 seeds + lite2
bench-pretrained: install
	$(PY) -m bench.bench_pretrained --out bench/RESULTS.md $(BENCH_ARGS)

# bench/bench_fastai.py: skinflow vs fastai on the same data and weights (installs the bench-only extra)
bench-fastai: install
	$(PY) -m pip install --disable-pip-version-check -q -c constraints.txt -e '.[bench]'
	$(PY) -m bench.bench_fastai --out bench/RESULTS.md $(BENCH_ARGS)

# bench/bench_rapid.py: time to accuracy, skinflow train (the init recipe) vs fastai, whole isic9, 3/5/10 epochs x 3 seeds
bench-loop: install
	$(PY) -m bench.bench_loop --out bench/RESULTS.md $(BENCH_ARGS)

# bench/bench_label_issues.py: planted label flips found (synthetic) and label issues on isic9 (~5 min on 2 cores)
bench-label-issues: install
	$(PY) -m bench.bench_label_issues --out bench/RESULTS.md $(BENCH_ARGS)

# bench/bench_confounders.py: the pen-mark flag against look-alikes (synthetic) and on isic9 (~3 min)
bench-confounders: install
	$(PY) -m bench.bench_confounders --out bench/RESULTS.md $(BENCH_ARGS)

bench-step: install
	$(PY) -m bench.bench_step --out bench/RESULTS.md $(BENCH_ARGS)

bench-rapid: install
	$(PY) -m pip install --disable-pip-version-check -q -c constraints.txt -e '.[bench]'
	$(PY) -m bench.bench_rapid --out bench/RESULTS.md $(BENCH_ARGS)
