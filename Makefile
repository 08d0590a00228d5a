# ketasim: two commands on a fresh machine with Python 3.11+ and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# tutorials rerun (for `make test` and `make docs`) only when a tutorial, the code or a card changed
TUTORIAL_STAMP := build/tutorials/.ran
TUTORIAL_DEPS := $(wildcard tutorials/*.py) $(shell find src/ketasim -name '*.py' -o \
	-name '*.yaml' -o -name '*.toml')

.PHONY: run test lint bench clean docs tutorials model-docs scorecard

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/ketasim run

test: $(STAMP) $(TUTORIAL_STAMP)
	$(BIN)/python -m ruff check src tests
	$(BIN)/python -m pytest -q

# tutorials on small n (figures and tables in build/tutorials/), under 2 minutes in all;
# `make test` and `make docs` rerun them only when a tutorial, the code or a card changed

tutorials: $(STAMP)
	$(BIN)/python -m ruff check tutorials
	KETASIM_TUTORIAL_N=$${KETASIM_TUTORIAL_N:-24} $(BIN)/python tutorials/run_all.py
	touch $(TUTORIAL_STAMP)

$(TUTORIAL_STAMP): $(STAMP) $(TUTORIAL_DEPS)
	$(MAKE) tutorials

# the documentation site, offline, warnings as errors (build/site/index.html)
docs: $(TUTORIAL_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict --site-dir build/site

# regenerate the committed model page after changing a card or an equation
model-docs: $(STAMP)
	$(BIN)/ketasim docs model --out docs/model.md

# the shipped literature scorecard: 1000 patients per arm, where the count moves by at most 2
# between seeds (docs/validation.md, section 7); about 7 minutes with an empty cache
scorecard: $(STAMP)
	$(BIN)/ketasim validate --n 1000 --seed 0 --write docs/validation-scorecard.json

bench: $(STAMP)
	$(BIN)/ketasim bench pk

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
