"""The course notebooks: pairs in sync, stored without outputs, house structure.

``notebooks/NN_topic.py`` (jupytext percent format) is the reviewed source and
``notebooks/NN_topic.ipynb`` is generated from it with
``jupytext --sync notebooks/NN_topic.py`` (or ``make notebooks``). Running the
notebooks is nbval's job (``notebooks`` is in the pytest testpaths).
"""

from __future__ import annotations

import re
from pathlib import Path

import jupytext
import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
STEMS = sorted({p.stem for p in NOTEBOOKS.glob("*.py")} | {p.stem for p in NOTEBOOKS.glob("*.ipynb")})
QUICK_LINE = 'QUICK = os.environ.get("CELLPOSE_NB_QUICK", "0") == "1"'
REQUIRED_HEADINGS = ("What you will learn", "In practice", "Exercises")


def _cells(path):
    """(cell_type, source, tags) of every cell, as jupytext reads the file."""
    nb = jupytext.read(path)
    return [(c.cell_type, c.source, tuple(c.metadata.get("tags", ()))) for c in nb.cells]


def _is_colab_setup(cell):
    return cell.cell_type == "code" and "google.colab" in cell.source


def test_there_are_notebooks():
    assert STEMS, f"no notebooks found in {NOTEBOOKS}"


@pytest.mark.parametrize("stem", STEMS)
def test_every_notebook_is_a_pair(stem):
    for suffix in (".py", ".ipynb"):
        path = NOTEBOOKS / f"{stem}{suffix}"
        assert path.is_file(), f"{path.name} is missing: run `jupytext --sync notebooks/{stem}.py`"


@pytest.mark.parametrize("stem", STEMS)
def test_ipynb_is_stored_without_outputs(stem):
    nb = nbformat.read(NOTEBOOKS / f"{stem}.ipynb", as_version=4)
    nbformat.validate(nb)
    dirty = [k for k, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert not dirty, f"{stem}.ipynb has outputs or execution counts in cells {dirty}: regenerate it from the .py"


@pytest.mark.parametrize("stem", STEMS)
def test_ipynb_matches_its_py_source(stem):
    source, generated = _cells(NOTEBOOKS / f"{stem}.py"), _cells(NOTEBOOKS / f"{stem}.ipynb")
    assert len(source) == len(generated), (
        f"{stem}: {len(source)} cells in the .py but {len(generated)} in the .ipynb; "
        f"run `jupytext --sync notebooks/{stem}.py`"
    )
    for k, (a, b) in enumerate(zip(source, generated)):
        assert a == b, f"{stem}: cell {k} differs between .py and .ipynb; run `jupytext --sync notebooks/{stem}.py`"


@pytest.mark.parametrize("stem", STEMS)
def test_house_structure(stem):
    nb = jupytext.read(NOTEBOOKS / f"{stem}.py")
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    for heading in REQUIRED_HEADINGS:
        assert heading in markdown, f"{stem}: no {heading!r} in the markdown cells"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), f"{stem}: no title first"

    code = [c for c in nb.cells if c.cell_type == "code"]
    knobs = next(c for c in code if not _is_colab_setup(c))
    assert QUICK_LINE in knobs.source, f"{stem}: the first code cell after the Colab set-up must define {QUICK_LINE}"
    first_knob_cell = nb.cells.index(knobs)
    assert all(nb.cells.index(c) < first_knob_cell for c in code if _is_colab_setup(c)), (
        f"{stem}: the Colab set-up must come before everything else"
    )
    for cell in code:
        if _is_colab_setup(cell):
            assert "REPO_URL" in cell.source and "enable_custom_widget_manager" in cell.source
            continue
        shell = [line for line in cell.source.splitlines() if re.match(r"\s*[!%]\s*pip\b", line)]
        assert not shell, f"{stem}: pip outside the Colab set-up cell: {shell}"

    solutions = [c for c in nb.cells if "solution" in c.metadata.get("tags", ())]
    assert solutions, f"{stem}: no exercise solution tagged 'solution'"
    assert all(c.cell_type == "code" for c in solutions), f"{stem}: only code cells are tagged 'solution'"
    in_practice = markdown.index("In practice")
    assert markdown.index("Exercises", in_practice) > in_practice, f"{stem}: 'Exercises' must follow 'In practice'"
