# keepreading: `make run` serves the embedded default, `make test` runs the whole suite.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
RUN_ENV := KEEPREADING_ENV=development KEEPREADING_INSTANCE_PATH=$${KEEPREADING_INSTANCE_PATH:-$(CURDIR)/instance}

.PHONY: run test bench install clean

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP): $(PY) pyproject.toml
	$(PIP) install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(RUN_ENV) $(VENV)/bin/keepreading db upgrade
	$(RUN_ENV) $(VENV)/bin/keepreading demo --if-empty
	KEEPREADING_BASE_URL=$${KEEPREADING_BASE_URL:-http://127.0.0.1:$${PORT:-5000}} $(RUN_ENV) $(VENV)/bin/keepreading staff ensure-first
	$(RUN_ENV) $(PY) -m service.devserver

test: $(STAMP)
	@bash .ci/system-packages
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/run.py $(if $(QUICK),--quick,)

clean:
	rm -rf $(VENV) instance .pytest_cache
