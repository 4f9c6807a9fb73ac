"""Size figures of the package's modules: lines, top-level definitions, longest function, most parameters.

    python tools/code_stats.py [PACKAGE_DIR]     # default: cellpose_nb

Prints one row per module, largest first, and the totals; used for the
before/after table of a restructuring.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def _functions(tree):
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _n_params(fn) -> int:
    a = fn.args
    names = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs]
    return len([n for n in names if n not in ("self", "cls")]) + bool(a.vararg) + bool(a.kwarg)


def module_stats(path: Path) -> dict:
    text = path.read_text()
    tree = ast.parse(text)
    fns = _functions(tree)
    longest = max(fns, key=lambda f: f.end_lineno - f.lineno + 1, default=None)
    widest = max(fns, key=_n_params, default=None)
    return {
        "lines": len(text.splitlines()),
        "top_level": sum(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) for n in tree.body),
        "longest": (longest.end_lineno - longest.lineno + 1, longest.name) if longest else (0, "-"),
        "params": (_n_params(widest), widest.name) if widest else (0, "-"),
    }


def main(argv=None):
    root = Path((argv or sys.argv[1:] or ["cellpose_nb"])[0])
    rows = sorted(((p.relative_to(root).as_posix(), module_stats(p)) for p in root.rglob("*.py")),
                  key=lambda r: -r[1]["lines"])
    print(f"{'module':<34} {'lines':>6} {'defs':>5}  {'longest function':<34} {'most parameters'}")
    for name, s in rows:
        print(f"{name:<34} {s['lines']:>6} {s['top_level']:>5}  "
              f"{s['longest'][0]:>4} {s['longest'][1]:<29} {s['params'][0]:>3} {s['params'][1]}")
    total = sum(s["lines"] for _, s in rows)
    print(f"{len(rows)} modules, {total} lines; longest function "
          f"{max(s['longest'] for _, s in rows)}, most parameters {max(s['params'] for _, s in rows)}")


if __name__ == "__main__":
    main()
