"""tools/make_exercises.py: solutions removed, skeleton functions blanked, everything else intact,
nothing overwritten unasked; the exercise notebooks run up to their first TODO.

The solution notebooks are the course notebooks themselves: nbval runs them
(``pytest notebooks``, in CI), checkers included.
"""

from __future__ import annotations

import ast
import importlib.util
import textwrap
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9]*.ipynb"))
# the notebooks with hand derivations the learner writes, and functions that must be among them
SKELETONS = {
    "02_flows": {"diffuse", "heat_flows"},
    "03_masks_from_flows": {"bilinear", "follow_by_hand", "cluster_by_hand"},
    "05_training": {"loss_by_hand"},
    "06_evaluation": {"match_by_hand"},
}


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


def _bodies(source):
    """The source text of each top-level function's statements after its docstring."""
    lines = source.splitlines()
    out = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef):
            body = node.body[1:] if ast.get_docstring(node) is not None else node.body
            out.append("\n".join(lines[body[0].lineno - 1 : node.end_lineno]))
    return out


def _functions(source):
    return {n.name: n for n in ast.parse(source).body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def _calls(source, names):
    """The names in ``names`` that ``source`` calls anywhere (None when it is not plain Python)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    return {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)} & names


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
            elif "skeleton" in _tags(a):
                assert (b.cell_type, b.metadata) == (a.cell_type, a.metadata)  # the tag stays
                assert b.source == tool.skeleton_source(a.source) != a.source
            else:
                assert (b.cell_type, b.source, b.metadata) == (a.cell_type, a.source, a.metadata)
        assert n_solutions > 0, f"{src.name} has no solution cells"
        solution_code = [c.source for c in original.cells if "solution" in _tags(c)]
        solution_code += [body for c in original.cells if "skeleton" in _tags(c) for body in _bodies(c.source)]
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


# --- the skeleton tag -----------------------------------------------------------------------------

TOY_SOURCE = textwrap.dedent('''\
    import functools

    SCALE = 2.0  # kept as it is


    @functools.lru_cache(maxsize=None)
    def scaled_sum(values,
                   offset=0.0):  # a comment in the signature
        """The sum of `values`, times SCALE, plus `offset`."""
        # Hint: sum() the values, then multiply by SCALE;
        #   add the offset last.
        total = 0.0
        for v in values:
            total += v  # a running total
        # almost done
        return SCALE * total + offset


    def helper(x): return x + 1


    def documented_only(x):
        """Nothing but a docstring."""


    if SCALE > 1:
        def nested(y):
            return y * SCALE

    print("defined", scaled_sum.__name__)
    ''')


def test_skeleton_keeps_signatures_docstrings_and_hints(tool):
    out = tool.skeleton_source(TOY_SOURCE)
    before, after = _functions(TOY_SOURCE), _functions(out)  # ast.parse: the result is valid Python
    assert list(after) == list(before) == ["scaled_sum", "helper", "documented_only"]
    for name, old in before.items():
        new = after[name]
        assert ast.dump(new.args) == ast.dump(old.args)  # same signature
        assert [ast.dump(d) for d in new.decorator_list] == [ast.dump(d) for d in old.decorator_list]
        assert ast.get_docstring(new) == ast.get_docstring(old)
        body = new.body[1:] if ast.get_docstring(new) is not None else new.body
        assert len(body) == 1 and isinstance(body[0], ast.Raise)  # the body is gone: one raise
        assert ast.unparse(body[0]) == f"raise NotImplementedError('TODO: write {name}')"
    assert "    # Hint: sum() the values, then multiply by SCALE;\n    #   add the offset last.\n" in out
    assert tool.function_hint(TOY_SOURCE, "scaled_sum") == [
        "# Hint: sum() the values, then multiply by SCALE;", "#   add the offset last."]
    assert tool.function_hint(TOY_SOURCE, "helper") == []
    for gone in ("total", "running total", "almost done", "x + 1"):  # nothing of the solution is left
        assert gone not in out
    assert "offset=0.0):  # a comment in the signature" in out
    # everything but the top-level functions is unchanged (the nested def too: it is not top-level)
    keep = [ast.dump(n) for n in ast.parse(TOY_SOURCE).body if not isinstance(n, ast.FunctionDef)]
    assert [ast.dump(n) for n in ast.parse(out).body if not isinstance(n, ast.FunctionDef)] == keep
    assert out.endswith('print("defined", scaled_sum.__name__)\n')
    namespace = {}
    exec(compile(out, "<skeleton>", "exec"), namespace)  # the cell runs: it only defines the functions
    with pytest.raises(NotImplementedError, match="TODO: write helper"):
        namespace["helper"](1)


def test_skeleton_of_a_cell_without_functions_is_unchanged(tool):
    for source in ("x = 1\nprint(x)\n", "", "# just a comment", "class A:\n    def f(self):\n        return 1\n"):
        assert tool.skeleton_source(source) == source


def test_make_exercise_with_a_skeleton_cell(tool):
    nb = nbformat.v4.new_notebook()
    skeleton = nbformat.v4.new_code_cell(TOY_SOURCE, metadata={"tags": ["skeleton"]}, execution_count=1)
    skeleton.outputs = [nbformat.v4.new_output("stream", text="3.0\n")]
    checker = nbformat.v4.new_code_cell("assert scaled_sum((1.0,)) == 2.0")
    plain = nbformat.v4.new_code_cell("def untouched():\n    return 1", metadata={"tags": ["other"]})
    nb.cells = [nbformat.v4.new_markdown_cell("Write `scaled_sum` (★)."), skeleton, checker, plain]
    before = nbformat.writes(nb)
    ex = tool.make_exercise(nb)
    assert nbformat.writes(nb) == before  # the input is not modified
    assert ex.cells[1].source == tool.skeleton_source(TOY_SOURCE) and _tags(ex.cells[1]) == ["skeleton"]
    assert ex.cells[1].outputs == [] and ex.cells[1].execution_count is None and ex.cells[1].id == nb.cells[1].id
    for k in (0, 2, 3):  # the markdown, the checker and a cell without the tag: as they were
        assert ex.cells[k].source == nb.cells[k].source
    nbformat.validate(ex)
    namespace = {}
    exec(ex.cells[1].source, namespace)  # the skeleton cell runs ...
    with pytest.raises(NotImplementedError, match="TODO: write scaled_sum"):
        exec(ex.cells[2].source, namespace)  # ... and its checker fails at the TODO


def test_skeleton_tag_needs_plain_python_code(tool):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("%timeit 1\ndef f():\n    return 1", metadata={"tags": ["skeleton"]})]
    with pytest.raises(ValueError, match="not plain Python"):
        tool.make_exercise(nb)
    nb.cells = [nbformat.v4.new_markdown_cell("def f(): pass", metadata={"tags": ["skeleton"]})]
    with pytest.raises(ValueError, match="markdown cell"):
        tool.make_exercise(nb)


@pytest.mark.parametrize("stem", sorted(SKELETONS))
def test_course_skeletons_are_well_formed(stem):
    """Each skeleton function has a docstring and a hint; its cell calls none of them; a later cell
    calls it and checks it with an assert; its notebook marks the difficulty."""
    nb = nbformat.read(NOTEBOOK_DIR / f"{stem}.ipynb", as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code"]
    skeletons = [c for c in cells if "skeleton" in _tags(c)]
    names = {name for c in skeletons for name in _functions(c.source)}
    assert SKELETONS[stem] <= names, f"{stem}: {SKELETONS[stem] - names} are not skeleton functions"
    spec = importlib.util.spec_from_file_location("make_exercises", ROOT / "tools" / "make_exercises.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    for cell in skeletons:
        functions = _functions(cell.source)
        assert functions, f"{stem}: a skeleton cell without functions"
        assert not _calls("\n".join(ast.unparse(n) for n in ast.parse(cell.source).body
                                    if not isinstance(n, ast.FunctionDef)), names)
        for name, node in functions.items():
            assert ast.get_docstring(node), f"{stem}: {name} has no docstring"
            assert tool.function_hint(cell.source, name), f"{stem}: {name} has no '# Hint' block"
        later = cells[cells.index(cell) + 1 :]
        checker = next(c for c in later if _calls(c.source, set(functions)))
        assert "assert" in checker.source, f"{stem}: the first cell calling {sorted(functions)} checks nothing"
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "★" in markdown and "**Checkpoint" in markdown


def _run_until_first_error(nb, cwd):
    """Execute ``nb`` cell by cell in a fresh python3 kernel; (index, CellExecutionError) of the
    first cell that fails, or (None, None)."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    client = NotebookClient(nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(cwd)}})
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            try:
                client.execute_cell(cell, index)
            except CellExecutionError as exc:
                return index, exc
    return None, None


@pytest.mark.parametrize("stem", sorted(SKELETONS))
def test_exercise_runs_up_to_its_first_todo(tool, stem, monkeypatch):
    """The exercise version, in QUICK mode, runs without error until the first cell that calls a
    TODO function, which fails there with the skeleton's NotImplementedError."""
    monkeypatch.setenv("CELLPOSE_NB_QUICK", "1")  # the kernel inherits the environment
    exercise = tool.make_exercise(tool.read_notebook(NOTEBOOK_DIR / f"{stem}.py"))
    skeleton_at = [k for k, c in enumerate(exercise.cells) if "skeleton" in _tags(c)]
    names = {name for k in skeleton_at for name in _functions(exercise.cells[k].source)}
    first_call = next(k for k, c in enumerate(exercise.cells)
                      if k > skeleton_at[0] and c.cell_type == "code" and _calls(c.source, names))
    index, error = _run_until_first_error(exercise, NOTEBOOK_DIR)
    assert error is not None, f"{stem}: the exercise version ran to the end"
    assert (index, error.ename) == (first_call, "NotImplementedError"), (
        f"{stem}: cell {index} failed before the first TODO (cell {first_call}): {error.ename}: {error.evalue}")
    assert "TODO: write " in error.evalue and error.evalue.split("TODO: write ")[1].strip() in names
