# keepreading: `make run` serves the embedded default, `make test` runs the whole suite, `make lint` checks style and types.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed

.PHONY: run test lint bench chaos install clean wipe

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP): $(PY) pyproject.toml
	$(PIP) install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# PORT=5077 make run serves on another port. `exec`: make's SIGTERM reaches the server, which stops its worker and beat.
run: $(STAMP)
	@exec $(PY) -m service.devserver

test: $(STAMP)
	@bash .ci/system-packages
	$(PY) -m pytest $(PYTEST_ARGS)

# ruff's and mypy's settings are in pyproject.toml ([tool.ruff], [tool.mypy]).
lint: $(STAMP)
	$(VENV)/bin/ruff check service tests bench
	$(VENV)/bin/mypy service

bench: $(STAMP)
	$(PY) bench/run.py $(if $(QUICK),--quick,)

# Seven faults injected during a 10,000-subscriber digest run on private PostgreSQL/Redis; prints one table.
# CHAOS_ARGS="--only 1,3 --subscribers 2000" narrows it.
chaos: $(STAMP)
	$(PY) bench/chaos.py $(CHAOS_ARGS)

# `clean` keeps the instance folder (database, secret, outbox); `wipe` deletes it too.
clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info

wipe: clean
	rm -rf instance
