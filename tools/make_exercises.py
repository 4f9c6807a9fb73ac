#!/usr/bin/env python
"""Make exercise versions of the course notebooks: solutions removed.

Every cell tagged ``solution`` (``# %% tags=["solution"]`` in the jupytext
source) becomes an empty code cell holding ``# Your solution here``; outputs
are cleared; every other cell is kept as it is. One ``<name>.ipynb`` is written
per input, into the output folder.

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
import copy
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_INPUTS = "notebooks/[0-9]*.ipynb"  # relative to the repository root
DEFAULT_OUT = ROOT / "exercises"
SOLUTION_TAG = "solution"
PLACEHOLDER = "# Your solution here"


def read_notebook(path):
    """A notebook from an .ipynb file or a jupytext script."""
    path = Path(path)
    if path.suffix == ".ipynb":
        return nbformat.read(path, as_version=4)
    import jupytext  # only needed for text sources

    return jupytext.read(path)


def is_solution(cell):
    return SOLUTION_TAG in cell.get("metadata", {}).get("tags", [])


def make_exercise(nb):
    """A copy of ``nb`` with solution cells replaced by placeholders and no outputs.

    The input notebook is not modified.
    """
    out = copy.deepcopy(nb)
    cells = []
    for cell in out.cells:
        if is_solution(cell):
            blank = nbformat.v4.new_code_cell(PLACEHOLDER)
            if "id" in cell:
                blank["id"] = cell["id"]  # stable ids: the same cell position in both versions
            cell = blank
        elif cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
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
        Two inputs share a name, or a target is one of the inputs.
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
