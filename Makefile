# mltrain: `make demo` runs the quickstart, `make test` provisions what the suite needs and runs it.
#
# Two installs into one .venv: the demo needs only mltrain and its own dependencies (seconds); the suite,
# lint and benchmarks add the dev tools, pyspark (the spark extra: a ~490 MB wheel), Ray (the ray extra: a
# local test cluster) and MLflow (the mlflow extra). `make install` is the full one; `make demo` never pays for it.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
BASE   := $(VENV)/.installed-base
DEV    := $(VENV)/.installed-dev

.PHONY: install install-base demo test lint bench lock provision clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(BASE): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -e .
	touch $@

$(DEV): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,spark,ray,mlflow]'
	touch $(BASE) $@

install-base: $(BASE)

install: $(DEV)

demo: $(BASE)
	MLTRAIN=$(CURDIR)/$(VENV)/bin/mltrain sh examples/quickstart/demo.sh

provision:
	bash .ci/provision.sh
	bash .ci/provision-docker.sh
	bash .ci/provision-ssh.sh
	bash .ci/provision-browser.sh

# Two pytest-xdist workers: most of the suite's time is spent waiting on subprocesses, containers and clusters.
# Each worker starts the session/module servers and clusters its tests need (every one on free ports, in its
# own folders). PYTEST_XDIST="" runs the suite in one process.
PYTEST_XDIST ?= -n 2

test: install provision
	$(PY) -m pytest -q $(PYTEST_XDIST) $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check mltrain hydra_plugins tests benchmarks examples .ci
	$(VENV)/bin/mypy

bench: install
	$(PY) benchmarks/run_all.py

# The curated venv presets' full pins (conf/environment/*.lock.txt), resolved anew; see .ci/lock_presets.py.
lock: install
	$(PY) .ci/lock_presets.py

clean:
	rm -rf $(VENV) build dist *.egg-info examples/quickstart/.mltrain
