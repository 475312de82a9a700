# Two commands matter on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
JOBS ?= 2

.PHONY: setup demo test lint bench results results-dispatch clean protos

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	# pip itself is pinned too (the version the suite last passed with), for the same reason as constraints.txt.
	$(BIN)/pip install -q "pip==26.3"
	# torch is pinned exactly: 2.13.0 is a CPU build on disk here; anything else downloads CUDA wheels.
	$(BIN)/pip install -q "torch==2.13.0"
	# constraints.txt holds every other package at the version the suite last passed with (pip freeze), so a
	# release upstream cannot change what CI installs; refresh it deliberately, then run `make lint test`.
	$(BIN)/pip install -q -c constraints.txt -e ".[sim,train,serve,dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/python -m dispatch_cli.demo

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy dispatch simulator training service dispatch_cli

bench: setup
	$(BIN)/python -m bench.simulate

results: setup
	$(BIN)/python -m simulator.results --jobs $(JOBS) --out docs/results.md

# Learned policies (BC, InSPO; 3 training seeds) against the heuristics: 64 held-out and all 240 instances.
results-dispatch: setup
	$(BIN)/python -m training.dispatch.results --jobs $(JOBS) --out docs/results-dispatch.md

# Regenerate service/gen from protos/ (the generated files are committed; a test checks they are fresh).
protos: setup
	$(BIN)/python -m service.protogen

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
