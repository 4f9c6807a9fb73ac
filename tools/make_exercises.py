#!/usr/bin/env python
"""Make exercise versions of the course notebooks: solutions removed, derivations blanked.

Two cell tags (``# %% tags=["..."]`` in the jupytext source) say what to take out:

``solution``
    The cell becomes an empty code cell holding ``# Your solution here`` (its
    tags go too). For the exercises at the end of a notebook.

``skeleton``
    A code cell holding hand-derived functions that the learner writes. Every
    top-level ``def`` of the cell keeps its decorators, signature and docstring;
    its body becomes a TODO skeleton::

        def diffuse(inside, centre, n_iter, snapshots=()):
            '''Heat diffused from `centre` inside `inside`.'''
            # TODO: write the body of `diffuse`; the next cells check it against the package.
            # Hint: add 1 at the centre, average every 3x3 box, zero outside the cell.
            raise NotImplementedError("TODO: write diffuse")

    The rest of the cell (constants, imports, other statements) and its tags
    are kept; the cells that follow, with the ``assert`` comparing the function
    with the package, are the learner's checker and stay as they are. So the
    cell that *calls* a skeleton function must be another cell than the one
    that defines it. Functions are found with :mod:`ast`; a skeleton cell
    must therefore be plain Python (no ``%magics``).

    **Hints.** A comment block that starts with ``# Hint`` at the top of the
    function body (right after the docstring, before the first statement) is
    the hint. It is part of the source, so it shows in both versions: the
    solution notebook shows what the learner was told, and the exercise
    version keeps it, under the TODO line. Following comment lines of the
    same block belong to the hint; other comments of the body are removed
    with it. Difficulty marks (★ to ★★★) and classroom "Checkpoint" boxes
    live in the markdown cells and are copied unchanged.

Outputs of every code cell are cleared; every other cell is kept as it is.
One ``<name>.ipynb`` is written per input, into the output folder.

Usage::

    python tools/make_exercises.py                       # notebooks/[0-9]*.ipynb -> exercises/
    python tools/make_exercises.py notebooks/02_flows.py --out /tmp/ex
    python tools/make_exercises.py --out exercises --overwrite

Inputs may be ``.ipynb`` files or their jupytext ``.py`` sources. Existing
files are never replaced without ``--overwrite``, and an input is never
overwritten, with or without it.
"""

from __future__ import annotations

import argparse
import ast
import copy
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_INPUTS = "notebooks/[0-9]*.ipynb"  # relative to the repository root
DEFAULT_OUT = ROOT / "exercises"
SOLUTION_TAG = "solution"
SKELETON_TAG = "skeleton"
PLACEHOLDER = "# Your solution here"
HINT = re.compile(r"#\s*Hint\b")  # the first line of a hint block
TODO_LINE = "# TODO: write the body of `{name}`; the next cells check it against the package."
TODO_RAISE = 'raise NotImplementedError("TODO: write {name}")'


def read_notebook(path):
    """A notebook from an .ipynb file or a jupytext script."""
    path = Path(path)
    if path.suffix == ".ipynb":
        return nbformat.read(path, as_version=4)
    import jupytext  # only needed for text sources

    return jupytext.read(path)


def is_solution(cell):
    return SOLUTION_TAG in cell.get("metadata", {}).get("tags", [])


def is_skeleton(cell):
    return SKELETON_TAG in cell.get("metadata", {}).get("tags", [])


def _split_lines(source):
    """The lines of ``source`` with their line ends, split as the Python tokenizer does (\\n, \\r\\n, \\r)."""
    return re.findall(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$", source)


def _is_comment_or_blank(line):
    stripped = line.strip()
    return not stripped or stripped.startswith("#")


def _docstring(node):
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        return first
    return None


def skeleton_functions(source):
    """The names of the top-level functions of ``source`` that :func:`skeleton_source` blanks."""
    return [n.name for n in ast.parse(source).body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def function_hint(source, name):
    """The ``# Hint`` comment lines (stripped) at the top of function ``name`` in ``source``; [] if none."""
    lines = [line.rstrip("\r\n") for line in _split_lines(source)]
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            return [line.strip() for line in _hint_lines(lines, node)]
    raise KeyError(f"no top-level function {name!r}")


def _col(line, byte_col):
    """A column of ``ast`` (UTF-8 bytes) as a column of characters of ``line``."""
    return len(line.encode("utf-8")[:byte_col].decode("utf-8", errors="ignore"))


def _body_start(lines, node):
    """Where function ``node``'s kept head (decorators, signature, docstring) ends, and its first
    statement after the docstring (None when the body is only a docstring).

    The head end is (line, column), lines 1-based, columns in characters; ``lines`` have no newlines.
    """
    doc = _docstring(node)
    rest = node.body[1:] if doc else node.body
    first = rest[0] if rest else None
    if doc is not None:
        return (doc.end_lineno, _col(lines[doc.end_lineno - 1], doc.end_col_offset)), first
    line = lines[first.lineno - 1]
    col = _col(line, first.col_offset)
    if line[:col].strip():  # `def f(): return 1`, all on one line
        return (first.lineno, col), first
    # the header ends on the last code line before the first statement (comment lines are the body's)
    k = first.lineno - 1
    while k > node.lineno and _is_comment_or_blank(lines[k - 1]):
        k -= 1
    return (k, len(lines[k - 1])), first


def _hint_lines(lines, node):
    """The hint block: the comment lines, from one starting with ``# Hint``, between the head of
    function ``node`` and its first statement."""
    (head_line, _), first = _body_start(lines, node)
    stop = first.lineno - 1 if first is not None else node.end_lineno
    gap = lines[head_line:stop]  # the lines after the head's, before the first statement's
    for k, line in enumerate(gap):
        if HINT.match(line.strip()):
            block = []
            for follow in gap[k:]:
                if not follow.strip().startswith("#"):
                    break
                block.append(follow)
            return block
    return []


def skeleton_source(source):
    """``source`` with the body of every top-level function replaced by a TODO skeleton.

    Decorators, signatures, docstrings and ``# Hint`` comment blocks are kept
    (see the module docstring); everything outside the functions is kept as it
    is. A source without top-level functions comes back unchanged.

    Raises
    ------
    SyntaxError
        ``source`` is not plain Python.
    """
    tree = ast.parse(source)
    functions = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    if not functions:
        return source
    lines = _split_lines(source)
    bare = [line.rstrip("\r\n") for line in lines]
    starts = [0]  # character offset of the start of every line (and of the end)
    for line in lines:
        starts.append(starts[-1] + len(line))
    out = source
    for node in reversed(functions):  # from the last, so that the offsets of earlier ones stay valid
        (head_line, head_col), first = _body_start(bare, node)
        first_line = bare[first.lineno - 1] if first is not None else ""
        if first is not None and not first_line[: _col(first_line, first.col_offset)].strip():
            indent = re.match(r"[ \t]*", first_line).group()
        else:
            indent = " " * (node.col_offset + 4)
        hint = [indent + line.strip() for line in _hint_lines(bare, node)]
        body = [indent + TODO_LINE.format(name=node.name), *hint, indent + TODO_RAISE.format(name=node.name)]
        # replace up to the end of the function's last line, and comment lines indented into it
        end = node.end_lineno
        while end < len(bare) and bare[end].strip().startswith("#") and (
            len(bare[end]) - len(bare[end].lstrip()) > node.col_offset
        ):
            end += 1
        newline = lines[end - 1][len(bare[end - 1]) :]
        head = out[: starts[head_line - 1] + head_col].rstrip(" \t")
        out = head + "\n" + "\n".join(body) + newline + out[starts[end] :]
    ast.parse(out)  # still valid Python
    return out


def make_exercise(nb):
    """A copy of ``nb`` with solution cells replaced by placeholders, skeleton cells'
    functions blanked (:func:`skeleton_source`) and no outputs.

    The input notebook is not modified.

    Raises
    ------
    ValueError
        A cell tagged ``skeleton`` is not a code cell, or not plain Python.
    """
    out = copy.deepcopy(nb)
    cells = []
    for k, cell in enumerate(out.cells):
        if is_solution(cell):
            blank = nbformat.v4.new_code_cell(PLACEHOLDER)
            if "id" in cell:
                blank["id"] = cell["id"]  # stable ids: the same cell position in both versions
            cell = blank
        elif cell.cell_type == "code":
            if is_skeleton(cell):
                try:
                    cell.source = skeleton_source(cell.source)
                except SyntaxError as exc:
                    raise ValueError(f"cell {k} is tagged {SKELETON_TAG!r} but is not plain Python: {exc}") from exc
            cell.outputs = []
            cell.execution_count = None
        elif is_skeleton(cell):
            raise ValueError(f"cell {k} is tagged {SKELETON_TAG!r} but is a {cell.cell_type} cell, not code")
        cells.append(cell)
    out.cells = cells
    # a plain .ipynb: keep jupytext.toml's pairing from giving exercises a .py twin
    out.metadata["jupytext"] = {"formats": "ipynb"}
    return out


def make_exercises(inputs, out_dir, *, overwrite=False):
    """Write the exercise version of each input into ``out_dir``; return the paths written.

    Raises
    ------
    FileNotFoundError
        An input does not exist.
    FileExistsError
        A target exists and ``overwrite`` is False (nothing is written then).
    ValueError
        Two inputs share a name, a target is one of the inputs, or a cell tagged
        ``skeleton`` is not a plain-Python code cell (nothing is written then).
    """
    inputs = [Path(p) for p in inputs]
    out_dir = Path(out_dir)
    missing = [str(p) for p in inputs if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"no such notebook: {', '.join(missing)}")
    targets = [out_dir / f"{p.stem}.ipynb" for p in inputs]
    if len(set(targets)) != len(targets):
        raise ValueError(f"two inputs would write the same exercise file: {[str(p) for p in inputs]}")
    sources = {p.resolve() for p in inputs}
    clash = [str(t) for t in targets if t.resolve() in sources]
    if clash:
        raise ValueError(f"refusing to write exercises over their own sources: {', '.join(clash)}")
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"exercise files exist (pass --overwrite to replace them): {', '.join(existing)}")
    exercises = [make_exercise(read_notebook(p)) for p in inputs]  # read all before writing any
    out_dir.mkdir(parents=True, exist_ok=True)
    for nb, target in zip(exercises, targets):
        nbformat.validate(nb)
        nbformat.write(nb, target)
    return targets


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path,
                        help=f"notebooks (.ipynb or jupytext .py); default {DEFAULT_INPUTS}")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: exercises/)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing exercise files")
    args = parser.parse_args(argv)
    inputs = args.notebooks or sorted(ROOT.glob(DEFAULT_INPUTS))
    if not inputs:
        parser.error(f"no notebooks given and none match {ROOT / DEFAULT_INPUTS}")
    try:
        written = make_exercises(inputs, args.out, overwrite=args.overwrite)
    except (FileExistsError, FileNotFoundError, ValueError) as exc:
        print(f"make_exercises: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
