"""tools/make_exercises.py: solutions removed, everything else intact, nothing overwritten unasked."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("make_exercises", ROOT / "tools" / "make_exercises.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tags(cell):
    return cell.metadata.get("tags", [])


def _toy_notebook():
    nb = nbformat.v4.new_notebook()
    solution = nbformat.v4.new_code_cell("answer = 42", metadata={"tags": ["solution"]})
    solution.outputs = [nbformat.v4.new_output("stream", text="42\n")]
    ran = nbformat.v4.new_code_cell("x = 1", execution_count=3)
    ran.outputs = [nbformat.v4.new_output("stream", text="1\n")]
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Title\n1. Compute the answer."),
        solution,
        ran,
        nbformat.v4.new_markdown_cell("A written answer.", metadata={"tags": ["solution", "other"]}),
    ]
    return nb


def test_there_are_notebooks_with_solutions():
    assert NOTEBOOKS, "no notebooks/NN_*.ipynb found"
    assert any("solution" in _tags(c) for p in NOTEBOOKS for c in nbformat.read(p, as_version=4).cells)


def test_make_exercise_on_a_toy_notebook(tool):
    nb = _toy_notebook()
    before = nbformat.writes(nb)
    ex = tool.make_exercise(nb)
    assert nbformat.writes(nb) == before  # the input is not modified
    assert [c.cell_type for c in ex.cells] == ["markdown", "code", "code", "code"]
    assert ex.cells[0].source == nb.cells[0].source
    for k in (1, 3):  # both solution cells, code and markdown, become placeholders
        assert ex.cells[k].source == tool.PLACEHOLDER and ex.cells[k].outputs == [] and not _tags(ex.cells[k])
        assert ex.cells[k].id == nb.cells[k].id
    assert ex.cells[2].source == "x = 1" and ex.cells[2].outputs == [] and ex.cells[2].execution_count is None
    nbformat.validate(ex)


def test_course_notebooks(tool, tmp_path):
    assert tool.main([*map(str, NOTEBOOKS), "--out", str(tmp_path)]) == 0
    for src in NOTEBOOKS:
        original = nbformat.read(src, as_version=4)
        exercise = nbformat.read(tmp_path / src.name, as_version=4)
        assert len(exercise.cells) == len(original.cells)
        n_solutions = 0
        for a, b in zip(original.cells, exercise.cells):
            assert "solution" not in _tags(b)
            if "solution" in _tags(a):
                n_solutions += 1
                assert b.cell_type == "code" and b.source == tool.PLACEHOLDER
                assert a.source.strip() and a.source not in ("", tool.PLACEHOLDER)
            else:
                assert (b.cell_type, b.source, b.metadata) == (a.cell_type, a.source, a.metadata)
        assert n_solutions > 0, f"{src.name} has no solution cells"
        solution_code = [c.source for c in original.cells if "solution" in _tags(c)]
        assert not any(code in nbformat.writes(exercise) for code in solution_code if len(code) > 40)


def test_py_source_gives_the_same_exercise(tool, tmp_path):
    src = NOTEBOOKS[0]
    tool.make_exercises([src], tmp_path / "from_ipynb")
    tool.make_exercises([src.with_suffix(".py")], tmp_path / "from_py")
    a = nbformat.read(tmp_path / "from_ipynb" / src.name, as_version=4)
    b = nbformat.read(tmp_path / "from_py" / src.name, as_version=4)
    assert [(c.cell_type, c.source) for c in a.cells] == [(c.cell_type, c.source) for c in b.cells]


def test_never_overwrites_without_being_asked(tool, tmp_path, capsys):
    src = NOTEBOOKS[0]
    target = tmp_path / src.name
    target.write_text("a student's work")
    assert tool.main([str(src), "--out", str(tmp_path)]) == 1
    assert target.read_text() == "a student's work"
    assert "--overwrite" in capsys.readouterr().err
    with pytest.raises(FileExistsError, match=src.name):
        tool.make_exercises([src], tmp_path)
    assert tool.main([str(src), "--out", str(tmp_path), "--overwrite"]) == 0
    assert nbformat.read(target, as_version=4).cells


def test_never_writes_over_its_input(tool, tmp_path):
    copy = tmp_path / "01_copy.ipynb"
    copy.write_bytes(NOTEBOOKS[0].read_bytes())
    with pytest.raises(ValueError, match="own sources"):
        tool.make_exercises([copy], tmp_path, overwrite=True)
    assert copy.read_bytes() == NOTEBOOKS[0].read_bytes()


def test_bad_inputs(tool, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such notebook"):
        tool.make_exercises([tmp_path / "missing.ipynb"], tmp_path / "out")
    src = NOTEBOOKS[0]
    with pytest.raises(ValueError, match="same exercise file"):
        tool.make_exercises([src, src.with_suffix(".py")], tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written
