# tuneloop: `make run` runs the whole loop on the demo project, `make test` runs the test suite.
# Every target sets up .venv itself (pinned versions from requirements/).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.tuneloop-installed
DEMO ?= demo
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup run test test-fast bench-cpu clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/lock.txt requirements/nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch stays in the same pip call as the rest, or pip pulls a multi-GB CUDA build
	$(PIP) install -q -r requirements/lock.txt
	$(PIP) install -q --no-deps -r requirements/nodeps.txt
	$(PIP) install -q --no-deps -e .
	touch $(STAMP)

run: setup
	$(VENV)/bin/tuneloop models pull default
	test -f $(DEMO)/tuneloop.yaml || $(VENV)/bin/tuneloop init $(DEMO) --example json-extraction
	cd $(DEMO) && ../$(VENV)/bin/tuneloop run

test: setup
	$(PY) -m pytest -q -p no:cacheprovider

test-fast: setup
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow"

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
