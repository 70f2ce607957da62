# featcache: `make demo` runs the whole pipeline on the embedded default; `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
# The CPU wheel of torch; a machine that already has a (CUDA) torch in the venv keeps it.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup test lint docs docs-serve demo demo-quick bench wheel-check clean

setup: $(VENV)/.installed

# pip prints what it collects and installs (a quiet pip looked stuck for minutes in a log)
$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c "import torch" 2>/dev/null || { echo "setup: installing $(TORCH) (the CPU wheel, 190 MB)"; \
		$(BIN)/pip install --progress-bar off "$(TORCH)"; }
	@echo "setup: installing featcache with its test extras (xarray, parquet, docs, search) into $(VENV)"
	$(BIN)/pip install --progress-bar off -e ".[test]"
	@touch $@

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

# the documentation site into site/, strictly: a broken link or an unresolved reference fails the build
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

demo: setup
	$(BIN)/featcache demo --size standard

demo-quick: setup
	$(BIN)/featcache demo --size quick

# the built wheel in a fresh venv outside the checkout runs the quick demo from an empty folder (.ci/wheel-check)
wheel-check: setup
	VENV=$(VENV) .ci/wheel-check "$(PYTHON)" "$(TORCH)"

bench: setup
	$(BIN)/featcache bench --overwrite

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info build site
