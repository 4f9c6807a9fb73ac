"""The NumPy layer imports neither torch, matplotlib nor ipywidgets."""

import subprocess
import sys

NUMPY_LAYER = ["data", "normalize", "flows", "masks", "metrics", "augment", "export"]
FORBIDDEN = ["torch", "matplotlib", "ipywidgets"]


def test_numpy_layer_imports_no_heavy_libraries():
    code = (
        "import importlib, sys, json\n"
        f"mods = {NUMPY_LAYER!r}\n"
        "found = []\n"
        "for m in mods:\n"
        "    try:\n"
        "        importlib.import_module('cellpose_nb.' + m)\n"
        "        found.append(m)\n"
        "    except ModuleNotFoundError as e:\n"
        "        if e.name != 'cellpose_nb.' + m: raise\n"
        f"bad = sorted(k for k in {FORBIDDEN!r} if k in sys.modules)\n"
        "print(json.dumps({'found': found, 'bad': bad}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    import json

    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"data", "normalize", "flows", "masks", "metrics"} <= set(res["found"])
    assert res["bad"] == [], f"the NumPy layer imported {res['bad']}"
