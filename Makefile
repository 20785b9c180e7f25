# histokg: the README's two commands are `make demo` and `make test`.
# Both create the virtual environment (.venv) themselves.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO_OUT ?= runs/demo
PYTEST_ARGS ?=

.PHONY: demo workflow-demo test test-all test-browser bench lint format venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# One stamp per install flavour; re-installs when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@ $(VENV)/.installed

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/histokg demo --out $(DEMO_OUT) --overwrite

# The Snakemake workflow (docs/pipeline.md) on its tiny synthetic study; the study is made once.
$(VENV)/.installed-workflow: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[workflow]"
	touch $@ $(VENV)/.installed

workflow-demo: $(VENV)/.installed-workflow
	test -f runs/workflow-demo/study/study.json || $(BIN)/histokg synth runs/workflow-demo/study --config configs/workflow_synth.yaml
	$(BIN)/snakemake --cores 2

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -m "not slow and not gpu and not browser" $(PYTEST_ARGS)

# The page in Debian's headless chromium (apt-get install chromium; nothing downloads a browser).
test-browser: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -m browser $(PYTEST_ARGS)

test-all: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -m "not gpu" $(PYTEST_ARGS)

bench: $(VENV)/.installed-test
	@for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed-test
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
