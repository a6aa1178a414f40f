# tts-batch: two commands for a newcomer with Python 3.11: `make up` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install up test test-unit test-integration bench lint typecheck check clean help

help:
	@echo "make up        create .venv, install, start redis + worker + api + flower + exporter under supervisord (a process that dies is restarted)"
	@echo "make test      create .venv, install, run the whole test suite"
	@echo "make install   only create .venv and install the package with the dev extra"
	@echo "make bench     run every benchmark: engine, encoders, pipeline, fan-out, speech vs piper, memory (docs/benchmarks.md)"
	@echo "make lint      ruff check . (the rules are in pyproject.toml)"
	@echo "make typecheck mypy --strict on engine/ and tasks/, plain mypy on monitoring/ app/ settings.py tts_batch_client/"
	@echo "make check     lint + typecheck (CI runs both before the tests)"

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (or set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP): $(PY) setup.cfg pyproject.toml
	$(PIP) install --quiet -e '.[dev,ja]'
	@touch $(STAMP)

install: $(STAMP)

up: $(STAMP)
	$(PY) scripts/run_stack.py

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-integration: $(STAMP)
	$(PY) -m pytest tests/integration tests/e2e $(PYTEST_ARGS)

# Each prints ratios against a baseline measured in the same run; BENCH_MEMORY_JOBS=1000 for
# the full memory run (about 40 minutes here), 200 by default.
BENCH_MEMORY_JOBS ?= 200
bench: $(STAMP)
	$(PY) scripts/bench_engine.py
	$(PY) scripts/bench_encode.py
	$(PY) scripts/bench_pipeline.py
	$(PY) scripts/bench_fanout.py
	$(PY) scripts/bench_speech.py
	$(PY) scripts/bench_memory.py --jobs $(BENCH_MEMORY_JOBS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# engine/ and tasks/ are held to --strict; the rest to setup.cfg's [mypy] sections.
typecheck: $(STAMP)
	$(VENV)/bin/mypy --strict engine/ tasks/
	$(VENV)/bin/mypy monitoring/ app/ settings.py tts_batch_client/

check: lint typecheck

clean:
	rm -rf $(VENV) var build *.egg-info .pytest_cache
