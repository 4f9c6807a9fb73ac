"""Methods that run in another interpreter: find one that has their packages, run their runner.

StarDist needs tensorflow and Mask R-CNN a torchvision that imports beside its
torch; neither belongs in the project's own environment.  Each has a runner
script in this folder (``stardist_runner.py``, ``maskrcnn_runner.py``) that
the benchmark starts with an interpreter that can import the method's
packages: the one given on the command line, else this interpreter, else the
repository's venv made for it (``.venv-baselines``, ``.venv-maskrcnn``).
The runner writes ``predictions.npz`` and ``record.json`` in its work folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
IMPORT_TIMEOUT_S = 1200  # tensorflow, or torch with its CUDA libraries, can take minutes to import on a busy machine


@dataclass(frozen=True)
class External:
    runner: str  # the script in this folder
    check: str  # the import that must succeed
    venv: str  # the repository's venv made for it
    install: str  # how to make that venv


STARDIST = External(
    runner="stardist_runner.py", check="import tensorflow, stardist.models, csbdeep",
    venv=".venv-baselines",
    install=("python3 -m venv .venv-baselines && .venv-baselines/bin/pip install torch==2.13.0 "
             "&& .venv-baselines/bin/pip install -e . stardist==0.9.2 tensorflow-cpu==2.21.0"))
MASKRCNN = External(
    runner="maskrcnn_runner.py", check="import torchvision.models.detection, cellpose_nb",
    venv=".venv-maskrcnn",
    install=("python3 -m venv .venv-maskrcnn && .venv-maskrcnn/bin/pip install torch==2.14.1 "
             "torchvision==0.29.1 && .venv-maskrcnn/bin/pip install -e ."))


def _imports(python, check) -> bool:
    try:
        done = subprocess.run([str(python), "-c", check], capture_output=True,
                              timeout=IMPORT_TIMEOUT_S, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    except subprocess.TimeoutExpired:
        print(f"{python}: `{check}` took over {IMPORT_TIMEOUT_S} s; taken as missing", flush=True)
        return False
    except OSError:
        return False
    return done.returncode == 0


def find_python(method: External, given: str | None = None):
    """``(python, tried)``: the first interpreter that imports the method's packages, or None."""
    candidates = [Path(given)] if given else [Path(sys.executable), REPO / method.venv / "bin" / "python"]
    tried = []
    for py in dict.fromkeys(candidates):
        tried.append(str(py))
        if py.is_file() and _imports(py, method.check):
            return py, tried
    return None, tried


def missing_message(name, method: External, tried) -> str:
    return (f"{name}: SKIPPED, its packages are not installed: no interpreter among {tried} "
            f"could `{method.check}`.  Make one (not in git) with\n    {method.install}\n"
            f"or pass --{name}-python PATH.")


def run_runner(python, method: External, work: Path, args: list[str], *, threads: int) -> dict:
    """Run the method's runner; return its ``record.json`` (raises SystemExit when it fails)."""
    cmd = [str(python), str(HERE / method.runner), "--work", str(work), *args]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "NUMBA_NUM_THREADS": str(threads), "TF_CPP_MIN_LOG_LEVEL": "2"}
    print("running:", " ".join(cmd), flush=True)
    done = subprocess.run(cmd + ["--command", " ".join(cmd)], env=env, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"{method.runner} failed with exit code {done.returncode}")
    return read_record(work)


def read_record(work: Path) -> dict | None:
    """The runner's record when it finished (``complete`` and predictions present), else None."""
    path = Path(work) / "record.json"
    if not path.is_file() or not (Path(work) / "predictions.npz").is_file():
        return None
    record = json.loads(path.read_text())
    return record if record.get("complete") else None
