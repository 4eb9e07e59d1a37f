# keepreading: `make run` serves the embedded default, `make test` runs the whole suite.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
export KEEPREADING_INSTANCE_PATH ?= $(CURDIR)/instance

.PHONY: run test bench install clean

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP): $(PY) pyproject.toml
	$(PIP) install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	KEEPREADING_ENV=development $(VENV)/bin/keepreading db upgrade
	KEEPREADING_ENV=development $(VENV)/bin/keepreading demo --if-empty
	KEEPREADING_ENV=development $(PY) -m service.devserver

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/run.py $(if $(QUICK),--quick,)

clean:
	rm -rf $(VENV) instance .pytest_cache
