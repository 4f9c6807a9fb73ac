"""Imports go one way: numpy layer -> torch layer -> display -> command line, with no cycles.

The import graph is read from the source (every ``import`` statement, module
level or inside a function), so a lazy import cannot hide a cycle.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cellpose_nb"
NUMPY_LAYER = ["atomic", "labels", "normalize", "flows", "fmm", "masks", "_dynamics", "metrics", "augment",
               "flows3d", "masks3d", "_dynamics3d", "stitch",
               "data", "export", "export3d", "diffusion", "threshold_cache"]
TORCH_LAYER = ["model", "predict", "bioimageio", "distributed", "train"]
DISPLAY_LAYER = ["plot", "widgets"]
HEAVY = ["torch", "matplotlib", "ipywidgets"]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, name: str, known) -> set[str]:
    """Names of the modules (of this package or outside it) that ``path`` imports."""
    is_package = path.name == "__init__.py"
    base = name.split(".") if is_package else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                target = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                target = node.module
            for a in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{target}.{a.name}"
                out.add(sub if sub in known else target)
    return out


def _graph():
    known = _modules()
    return {m: {t for t in _imports(p, m, known) if t in known and t != m} for m, p in known.items()}


def _in(module: str, layer) -> bool:
    return any(module == f"cellpose_nb.{m}" or module.startswith(f"cellpose_nb.{m}.") for m in layer)


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _package_edges(graph):
    """The graph with a package's ``__init__`` not counted as importing its own submodules.

    ``pkg/__init__.py`` re-exporting ``pkg.sub`` is how a subpackage keeps its public
    import paths; a submodule importing its own package back is still a cycle.
    """
    return {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in graph.items()}


def test_the_graph_is_read():
    graph = _graph()
    assert "cellpose_nb.masks" in graph and "cellpose_nb.flows" in graph["cellpose_nb.masks"]
    # the check can fail: a made-up cycle is found
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert _cycles(_package_edges(_graph())) == []


def test_submodules_do_not_import_their_own_package():
    graph = _graph()
    bad = [(m, t) for m, ts in graph.items() for t in ts  # (`__main__` runs the package: fine)
           if m.startswith(t + ".") and t != "cellpose_nb" and not m.endswith(".__main__")]
    assert bad == [], "import siblings directly, not through the package __init__: %s" % bad


@pytest.mark.parametrize("lower, upper, why", [
    (["predict"], ["train"], "inference must not need the training code"),
    (TORCH_LAYER, DISPLAY_LAYER + ["cli"], "the torch layer must not need the display or the CLI"),
    (NUMPY_LAYER, TORCH_LAYER + DISPLAY_LAYER + ["cli"], "the numpy layer sits at the bottom"),
    (DISPLAY_LAYER, ["cli"], "the display layer must not need the CLI"),
])
def test_imports_go_one_way(lower, upper, why):
    graph = _graph()
    bad = sorted((m, t) for m, ts in graph.items() if _in(m, lower) for t in ts if _in(t, upper))
    assert bad == [], f"{why}: {bad}"


def test_numpy_layer_names_no_heavy_library():
    known = _modules()
    bad = sorted((m, t) for m, p in known.items() if _in(m, NUMPY_LAYER)
                 for t in _imports(p, m, known) if t.split(".")[0] in HEAVY)
    assert bad == [], f"the numpy layer imports {bad}"


def test_numpy_layer_imports_no_heavy_libraries_at_run_time():
    mods = [m for m in NUMPY_LAYER if f"cellpose_nb.{m}" in _modules()]
    code = (
        "import importlib, sys, json\n"
        f"for m in {mods!r}: importlib.import_module('cellpose_nb.' + m)\n"
        f"print(json.dumps(sorted(k for k in {HEAVY!r} if k in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert {"labels", "flows", "masks", "metrics", "data", "normalize"} <= set(mods)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
