# The two quick-start commands live here: `make demo` and `make test`.
# Everything else (Python venv, Kafka jars, InfluxDB build, Mosquitto) is installed on first use
# and cached outside the clone (LARDER_CACHE, default ~/.cache/larder).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
LINT_DIRS := $(wildcard pipeline simulators tests benchmarks)
TYPED_DIRS := $(LINT_DIRS)

.PHONY: demo test chaos lint bench-quick stack-up stack-down venv

$(STAMP): pyproject.toml
	@echo "==> Python environment in $(VENV) (pip cache reused across clones)"
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	@$(VENV)/bin/pip install -q --upgrade pip
	@$(VENV)/bin/pip install -q -e '.[dev,bench]'
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

demo: $(STAMP)
	@$(VENV)/bin/larder demo

test: $(STAMP)
	@$(VENV)/bin/larder stack up
	@$(VENV)/bin/ruff check $(LINT_DIRS)
	@$(VENV)/bin/ruff format --check $(LINT_DIRS)
	@$(VENV)/bin/mypy $(TYPED_DIRS)
	@$(VENV)/bin/pytest -q -p no:cacheprovider -n 2 --dist loadfile -m 'not exclusive and not long' tests
	@$(VENV)/bin/pytest -q -p no:cacheprovider -m 'exclusive and not long' tests
	@$(VENV)/bin/python -m benchmarks.e2e --quick

# The chaos test on its own 3-broker cluster, both sizes, with its counts printed (short: a few thousand readings,
# also part of `make test`; full: 100,000, a broker stopped for 2 min, ~10-20 min, marked `long`).
chaos: $(STAMP)
	@$(VENV)/bin/pytest -s -p no:cacheprovider tests/e2e/test_chaos.py

lint: $(STAMP)
	@$(VENV)/bin/ruff check $(LINT_DIRS)
	@$(VENV)/bin/ruff format --check $(LINT_DIRS)
	@$(VENV)/bin/mypy $(TYPED_DIRS)

stack-up: $(STAMP)
	@$(VENV)/bin/larder stack up

stack-down: $(STAMP)
	@$(VENV)/bin/larder stack down
