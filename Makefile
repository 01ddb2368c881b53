# The two commands of the README:
#   make demo   set up and run the whole pipeline end to end on an embedded default
#   make test   set up and run every test
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: demo test lint bench clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	scripts/ensure-redis --binary
	$(BIN)/leadsync demo $(ARGS)

# tests/conftest.py starts a private redis-server on a free port (or uses
# LEADSYNC_TEST_REDIS_URL); scripts/ensure-redis makes sure the binary exists.
test: $(VENV)/.installed
	scripts/ensure-redis
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest $(ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The benches need the bench extra (psutil, the baselines' zeep and celery-batches).
bench: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m bench.run $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
