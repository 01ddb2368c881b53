# The two commands of the README:
#   make demo   set up and run the whole pipeline end to end on an embedded default
#   make test   set up and run every test
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# uv installs exactly what uv.lock pins; pip only bootstraps uv into the venv, at the
# version uv.lock itself pins for uv (the dev extra lists it).
UV_VERSION ?= $(shell sed -n '/^name = "uv"$$/{n;s/^version = "\(.*\)"$$/\1/p;}' uv.lock)
UV      = UV_PROJECT_ENVIRONMENT=$(abspath $(VENV)) UV_PYTHON_DOWNLOADS=never $(BIN)/uv

.PHONY: demo test lint bench lock upgrade clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(BIN)/uv: | $(BIN)/activate
	$(BIN)/pip install --quiet "uv$(if $(UV_VERSION),==$(UV_VERSION))"

# The project (editable) with its worker and dev extras, at the versions of uv.lock;
# --locked: nothing is resolved here, and a lock that disagrees with pyproject.toml fails
# (run make lock).
$(VENV)/.installed: pyproject.toml uv.lock | $(BIN)/uv
	$(UV) sync --locked --quiet --extra dev
	touch $@

# After editing a dependency list in pyproject.toml: resolve it into uv.lock.
lock: | $(BIN)/uv
	$(UV) lock

# Move every pin in uv.lock to the newest release the ranges allow (then make test).
upgrade: | $(BIN)/uv
	$(UV) lock --upgrade

demo: $(VENV)/.installed
	scripts/ensure-redis --binary
	$(BIN)/leadsync demo $(ARGS)

# tests/conftest.py starts a private redis-server on a free port (or uses
# LEADSYNC_TEST_REDIS_URL); scripts/ensure-redis makes sure the binary exists.
test: $(VENV)/.installed
	scripts/ensure-redis
	scripts/ensure-langs
	scripts/ensure-promtool
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest $(ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The benches need the bench extra (psutil, the baselines' zeep and celery-batches).
bench: $(VENV)/.installed
	$(UV) sync --locked --quiet --extra dev --extra bench
	$(BIN)/python -m bench.run $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# The incident drill (bench/incidents.py): a real Prometheus evaluates deploy/monitoring/
# alerts.yml (time compressed) while the pipeline goes through auth failure, quota, Marketo
# down and Redis full; replaces bench/INCIDENTS.md (~12 min; ARGS="--no-write" prints only).
.PHONY: incidents
incidents: $(VENV)/.installed
	$(UV) sync --locked --quiet --extra dev --extra bench
	scripts/ensure-redis --binary
	scripts/ensure-prometheus
	$(BIN)/python -m bench.incidents $(ARGS)
