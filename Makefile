# mltrain: `make demo` runs the quickstart, `make test` provisions what the suite needs and runs it.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test lint bench provision clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,spark]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	cd examples/quickstart && ../../$(VENV)/bin/mltrain script=train.py params.epochs=5 params.lr=0.05
	cd examples/quickstart && ../../$(VENV)/bin/mltrain runs list --limit 5

provision:
	bash .ci/provision.sh
	bash .ci/provision-docker.sh
	bash .ci/provision-ssh.sh

test: install provision
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check mltrain hydra_plugins tests benchmarks examples
	$(VENV)/bin/mypy

bench: install
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build dist *.egg-info examples/quickstart/.mltrain
