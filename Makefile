# cellpose_nb: two commands on a fresh machine (Python >= 3.10 with pip and venv):
#   make demo   # set up .venv and run the main job
#   make test   # set up .venv with the dev, reference, bioimageio and distributed extras and run every test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
# CPU torch first, so that nothing pulls a multi-GB CUDA build
TORCH ?= torch==2.13.0

.PHONY: demo test env env-dev notebooks exercises bench clean

demo: $(VENV)/.stamp-core
	$(BIN)/cellpose-nb demo --out out/demo --overwrite

test: $(VENV)/.stamp-dev
	CELLPOSE_NB_QUICK=1 MPLBACKEND=Agg $(BIN)/python -m pytest

env: $(VENV)/.stamp-core
env-dev: $(VENV)/.stamp-dev

$(VENV)/.stamp-core: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH)
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.stamp-dev: $(VENV)/.stamp-core
	$(PIP) install --quiet -e ".[dev,reference,bioimageio,distributed]"
	$(BIN)/python tools/setup_browser.py
	touch $@

# regenerate every notebooks/*.ipynb from its jupytext .py source (outputs stay empty)
notebooks: $(VENV)/.stamp-dev
	$(BIN)/jupytext --to ipynb notebooks/[0-9]*.py

# exercise versions of the notebooks, solutions removed
exercises: $(VENV)/.stamp-dev
	$(BIN)/python tools/make_exercises.py --out exercises --overwrite

bench: $(VENV)/.stamp-dev
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) out exercises .pytest_cache
