# cellpose_nb: two commands on a fresh machine (Python >= 3.10 with pip and venv):
#   make demo   # set up .venv and run the main job
#   make test   # set up .venv with the dev, reference, bioimageio and distributed extras and run every test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
# CPU torch first, so that nothing pulls a multi-GB CUDA build
TORCH ?= torch==2.13.0

.PHONY: demo test env env-dev notebooks exercises bench book book-publish set-repo clean

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
	$(PIP) install --quiet -e ".[dev,reference,bioimageio,distributed,book]"
	$(BIN)/python tools/setup_browser.py
	touch $@

# regenerate every notebooks/*.ipynb from its jupytext .py source (outputs stay empty)
notebooks: $(VENV)/.stamp-dev
	$(BIN)/jupytext --to ipynb notebooks/[0-9]*.py

# exercise versions of the notebooks, solutions removed
exercises: $(VENV)/.stamp-dev
	$(BIN)/python tools/make_exercises.py --out exercises --overwrite

# point every notebook's REPO_URL and Colab badge, the docs, ... at the published repository
# (one place: [tool.cellpose_nb] repository in pyproject.toml): make set-repo REPO=owner/name
set-repo:
	@test -n "$(REPO)" || { echo "usage: make set-repo REPO=owner/name"; exit 2; }
	$(MAKE) --no-print-directory $(VENV)/.stamp-dev
	$(BIN)/python tools/set_repository.py "$(REPO)"

bench: $(VENV)/.stamp-dev
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

# the course website in book/_build/html (docs/book.md): notebooks run in QUICK mode,
# `make book FULL=1` in full mode; the book extra is installed when missing
book: $(VENV)/.stamp-core
	$(BIN)/python -c "import jupyter_book, nbclient, ipykernel, ghp_import" 2>/dev/null || $(PIP) install --quiet -e ".[book]"
	$(BIN)/python tools/build_book.py $(if $(filter 1,$(FULL)),--full)

# publish book/_build/html to the gh-pages branch of the `origin` remote (GitHub Pages)
book-publish: book
	$(BIN)/ghp-import --no-jekyll --push --force --message "course website" book/_build/html

clean:
	rm -rf $(VENV) out exercises .pytest_cache book/_build
