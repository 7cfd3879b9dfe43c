# kdigits: `make demo` runs the whole DIGITS flow locally, `make test` runs the suite.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install bench clean crds

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/kdigits demo

lint: $(STAMP)
	$(BIN)/ruff check jobs controller tests bench
	$(BIN)/ruff format --check jobs controller tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest -q

bench: $(STAMP)
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

crds: $(STAMP)
	$(BIN)/python -m controller.crds --write

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
