# Set up the virtual environment once (pyproject.toml changes trigger a reinstall), then run things in it.
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed

.PHONY: setup test serve discover bench

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $(STAMP)

test: setup
	$(VENV)/bin/python -m pytest -q -ra

serve: setup
	$(VENV)/bin/autolabel serve --host 0.0.0.0 --port 9090

discover: setup
	$(VENV)/bin/autolabel discover ../shared/data/pennfudan/images --out runs/pennfudan.json --overlays runs/overlays

bench: setup
	$(VENV)/bin/autolabel bench --data ../shared/data
