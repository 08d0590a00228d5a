# ketasim: two commands on a fresh machine with Python 3.11+ and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/ketasim run

test: $(STAMP)
	$(BIN)/python -m ruff check src tests
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/ketasim bench pk

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
