"""Binder and Colab, verified offline (only the package registry is used).

Binder
    mybinder's repo2docker builds the image from ``binder/`` alone (the
    root's ``environment.yml`` is ignored once ``binder/`` exists): Python from
    ``runtime.txt``, ``pip install -r requirements.txt``, then ``postBuild``
    in the repository's root.  The test does the same in a fresh venv, checks
    that nothing is missing (``pip check``: postBuild installs the package with
    ``--no-deps``), and runs QUICK notebooks under nbval in that venv.

    ``requirements.txt`` names PyTorch's CPU wheel index
    (``--extra-index-url``), which the test machines cannot reach: the test
    drops that line and says so, and checks first that pip then gets a CPU
    torch here (this machine's pip serves the CPU ``torch==2.13.0`` wheel, as
    for ``make``), so that neither a hang on an unreachable index nor a
    multi-GB CUDA download happens.

Colab
    A fresh venv holds Colab's preinstalled versions (``COLAB_*`` below), a
    stand-in ``google.colab`` module makes each notebook's set-up cell take its
    Colab branch, and ``REPO_URL`` points at a local git repository holding
    the working tree (what would be pushed; in CI, the submitted commit).  The
    cell runs under IPython as on Colab (``%pip`` through ``get_ipython()``);
    then no preinstalled package may have changed version, and the package
    must import from the venv, segment a synthetic image with the shipped
    nuclei model and build the explorers' widgets with Colab's ipywidgets.
    After a cell that installs the ``distributed`` extra (notebook 10), a small
    ``segment_large`` run to OME-Zarr must work with Colab's dask.

Both build real environments (a few minutes each, pip's cache helps); they
skip with the reason where ``python3.11`` or the registry is missing, and
fail instead in CI, which must run them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import unquote

import nbformat
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BINDER = ROOT / "binder"
NOTEBOOKS = ROOT / "notebooks"
IN_CI = os.environ.get("CI", "").lower() == "true"

# ---------------------------------------------------------------------- Colab's versions
# Colab's preinstalled packages, from googlecolab/backend-info `pip-freeze.gpu.txt`
# (the GPU runtime's `pip freeze`), the newest snapshot this project could read:
# commit 4647a1df, of about 2026-02-23 (its astropy-iers-data 0.2026.2.23); checked
# 2026-12-03.  Colab runs Python 3.12 (cp312 wheels in that file).  Re-check there
# when Colab moves: a newer numpy, torch or ipywidgets only needs these constants.
COLAB_NUMPY = "2.0.2"
COLAB_TORCH = "2.10.0+cu128"
COLAB_IPYWIDGETS = "7.7.1"
COLAB_PYTHON = "3.12"
COLAB_PIP = "24.1.2"
#: Colab's versions of the rest of what the package and its set-up cell touch.
COLAB_OTHERS = {
    "ipython": "7.34.0",
    "ipykernel": "6.17.1",
    "ipyevents": "2.0.4",
    "widgetsnbextension": "3.6.10",
    "jupyterlab-widgets": "3.0.16",
    "scipy": "1.16.3",
    "scikit-image": "0.25.2",
    "numba": "0.60.0",
    "matplotlib": "3.10.0",
    "tifffile": "2026.2.20",
    "tqdm": "4.67.3",
    "safetensors": "0.7.0",
    "imageio": "2.37.2",
    "pillow": "11.3.0",
    # what the `distributed` extra (notebook 10) would otherwise move
    "python-dateutil": "2.9.0.post0",
    "dask": "2026.1.1",
    "distributed": "2026.1.1",
    "fsspec": "2025.3.0",
    "toolz": "0.12.1",
    "cloudpickle": "3.1.2",
    "partd": "1.4.2",
    "psutil": "5.9.5",
    "tornado": "6.5.1",
    "aiohttp": "3.13.3",
    "wrapt": "2.1.1",
    "urllib3": "2.5.0",
    "requests": "2.32.4",
}
#: Colab's torch is a CUDA build for Python 3.12, which cannot be had here; the CPU
#: wheel that this machine's pip serves for Python 3.11 (the Makefile's TORCH) stands
#: in for it.  The package's declared requirements are checked against COLAB_TORCH.
TORCH_STAND_IN = "2.13.0"

#: The Binder notebooks run under nbval (QUICK mode): the start, and two torch-free ones.
BINDER_NOTEBOOKS = ("00_quickstart", "02_flows", "03_masks_from_flows")
#: The one index line of binder/requirements.txt, dropped here (see the module docstring).
PYTORCH_INDEX = re.compile(r"^--extra-index-url\s+https://download\.pytorch\.org/whl/cpu/?\s*$")
PIP_NET = ["--retries", "2", "--timeout", "30"]
#: pip's warnings about this machine's local index folders, noise in failure reports.
_NOISE = re.compile(r"^WARNING: Location '.*' is ignored: it is neither a file nor a directory\.\n", re.M)


def _missing(message):
    if IN_CI:
        pytest.fail(f"CI needs this: {message}")
    pytest.skip(message)


def _canon(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def _neutral_cwd(env):
    """Where commands in a venv run unless told: beside the venv, never this checkout
    (``python -c`` and ``python -m`` put the working folder first on ``sys.path``)."""
    return Path(env["VIRTUAL_ENV"]).parent


def _run(cmd, *, what, timeout, cwd=None, **kwargs):
    """Run ``cmd``; fail the test with the tail of its output if it fails."""
    kwargs["cwd"] = cwd if cwd is not None else _neutral_cwd(kwargs["env"])
    start = time.monotonic()
    try:
        proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, **kwargs)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout or ""
        out = _NOISE.sub("", out.decode(errors="replace") if isinstance(out, bytes) else out)
        pytest.fail(f"{what}: still running after {timeout} s\n{out[-3000:]}")
    out = _NOISE.sub("", proc.stdout + proc.stderr)
    if proc.returncode != 0:
        pytest.fail(f"{what} failed (exit {proc.returncode}):\n{out[-6000:]}")
    print(f"[{time.monotonic() - start:5.1f} s] {what}")  # shown with -s, or -rP
    return out


def _env(venv, tmp):
    """The environment of a command run inside ``venv``, isolated from this one."""
    env = {k: v for k, v in os.environ.items()
           if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTEST_ADDOPTS"}
           and not k.startswith(("JUPYTER_", "IPYTHON"))}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv),
               PYTHONNOUSERSITE="1", PIP_NO_INPUT="1", MPLBACKEND="Agg",
               JUPYTER_DATA_DIR=str(tmp / "jupyter-data"), JUPYTER_CONFIG_DIR=str(tmp / "jupyter-config"),
               IPYTHONDIR=str(tmp / "ipython"))
    return env


def _versions(python, env):
    """{canonical name: version} of every distribution installed for ``python``."""
    code = ("import importlib.metadata as m, json; "
            "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))")
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, env=env, check=True,
                         timeout=120, cwd=_neutral_cwd(env)).stdout
    return {_canon(k): v for k, v in json.loads(out).items()}


def _copy_tree(dest):
    """The working tree's files (tracked, and untracked but not ignored) copied to ``dest``."""
    if shutil.which("git") is None:
        _missing("git is not installed")
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():  # a tracked file deleted in the working tree is not copied
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


@pytest.fixture(scope="module")
def python311(tmp_path_factory):
    """binder/runtime.txt's Python, and a registry that answers (both looked up quickly)."""
    runtime = (BINDER / "runtime.txt").read_text().strip()
    m = re.fullmatch(r"python-(3\.\d+)", runtime)
    assert m, f"binder/runtime.txt says {runtime!r}, not python-3.N"
    assert m.group(1) == "3.11", f"binder/runtime.txt asks for Python {m.group(1)}: update this test's interpreter"
    exe = shutil.which(f"python{m.group(1)}")
    if exe is None:
        _missing(f"python{m.group(1)} (binder/runtime.txt) is not installed")
    version = subprocess.run([exe, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=60)
    if version.returncode != 0 or version.stdout.strip() != m.group(1):
        _missing(f"{exe} does not run Python {m.group(1)}: {(version.stdout + version.stderr).strip()[-300:]}")
    try:
        probe = subprocess.run([exe, "-m", "pip", "download", "--no-deps", "--retries", "0", "--timeout", "5",
                                "--dest", tmp_path_factory.mktemp("registry-probe"),
                                f"ipywidgets=={COLAB_IPYWIDGETS}"],
                               capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        _missing("the package registry does not answer within 60 s")
    if probe.returncode != 0:
        _missing(f"the package registry does not answer: {_NOISE.sub('', probe.stderr)[-500:]}")
    return Path(exe)


def _make_venv(python, venv, env):
    _run([python, "-m", "venv", venv], what=f"{python} -m venv", timeout=120, env=env)
    return venv / "bin" / "python"


# ---------------------------------------------------------------------------- Binder
def _binder_requirements(tmp):
    """binder/requirements.txt without PyTorch's index line (the only option line it may have)."""
    kept, dropped = [], []
    for line in (BINDER / "requirements.txt").read_text().splitlines():
        stripped = line.strip()
        if PYTORCH_INDEX.match(stripped):
            dropped.append(stripped)
        elif stripped.startswith("-"):
            pytest.fail(f"binder/requirements.txt: option line {stripped!r}: this test knows only "
                        "PyTorch's CPU index line; teach it how to treat this one")
        else:
            kept.append(line)
    path = tmp / "binder-requirements.txt"
    path.write_text("\n".join(kept) + "\n")
    return path, dropped


def test_binder_builds_from_binder_folder_and_runs_quick_notebooks(tmp_path, python311):
    requirements, dropped = _binder_requirements(tmp_path)
    print(f"dropped from binder/requirements.txt (unreachable here): {dropped}")
    torch_req = [r for r in requirements.read_text().splitlines() if re.match(r"torch\b", r)]
    assert torch_req, "binder/requirements.txt does not name torch: pip would fetch a CUDA build"

    venv = tmp_path / "binder-venv"
    env = _env(venv, tmp_path)
    python = _make_venv(python311, venv, env)
    # Without PyTorch's CPU index pip must still get a CPU torch here; ask (metadata
    # only) before installing, so that a multi-GB CUDA download never starts.
    report = tmp_path / "torch-report.json"
    _run([python, "-m", "pip", "install", *PIP_NET, "--dry-run", "--no-deps", "--ignore-installed",
          "--quiet", "--report", report, torch_req[0]], what="pip's choice of torch", timeout=300, env=env)
    chosen = [unquote(i["download_info"]["url"]) for i in json.loads(report.read_text())["install"]]
    if not any("+cpu" in Path(u).name for u in chosen):
        _missing(f"without binder's PyTorch CPU index this machine's pip would install {chosen}, "
                 "not a CPU build")

    _run([python, "-m", "pip", "install", *PIP_NET, "--quiet", "-r", requirements],
         what="pip install -r binder/requirements.txt", timeout=480, env=env)
    repo = _copy_tree(tmp_path / "repo")
    post_build = repo / "binder" / "postBuild"
    post_build.chmod(0o755)  # repo2docker does chmod +x too
    _run([post_build], what="binder/postBuild", timeout=300, env=env, cwd=repo)
    _run([python, "-m", "pip", "check"], what="pip check (a dependency missing from binder/requirements.txt?)",
         timeout=120, env=env)

    facts = json.loads(_run([python, "-c", (
        "import json, sys, torch, cellpose_nb\n"
        "from jupyter_client.kernelspec import KernelSpecManager\n"
        "spec = KernelSpecManager().get_kernel_spec('python3')\n"
        "print(json.dumps({'cuda': torch.version.cuda, 'torch': torch.__version__, "
        "'package': cellpose_nb.__file__, 'kernel': spec.argv[0], 'kernel_dir': spec.resource_dir, "
        "'python': sys.version.split()[0]}))")], what="the Binder environment", timeout=300, env=env,
        cwd=tmp_path).strip().splitlines()[-1])
    assert facts["cuda"] is None, f"Binder's torch is a CUDA build: {facts}"
    assert facts["python"].startswith("3.11."), facts
    assert Path(facts["package"]).resolve().is_relative_to(repo.resolve()), (
        f"postBuild's editable install is not the one imported: {facts}")
    # the notebooks' kernel is this venv's Python (jupyter_client runs "python" as sys.executable)
    assert facts["kernel"] in ("python", "python3", str(python)), facts
    assert Path(facts["kernel_dir"]).resolve().is_relative_to(venv.resolve()), facts

    notebooks = [f"notebooks/{stem}.ipynb" for stem in BINDER_NOTEBOOKS]
    out = _run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", *notebooks],
               what="QUICK notebooks under nbval in the Binder environment", timeout=420,
               env={**env, "CELLPOSE_NB_QUICK": "1"}, cwd=repo)
    summary = out.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary) and "failed" not in summary and "error" not in summary, out[-3000:]
    print(f"Binder: torch {facts['torch']}, {summary}")


# ----------------------------------------------------------------------------- Colab
FAKE_COLAB_INIT = '''"""Stand-in for Colab's google.colab (tests/test_launch.py): its import marks Colab."""
'''
FAKE_COLAB_OUTPUT = '''"""Stand-in for google.colab.output: records the calls the set-up cell makes."""

CALLS = []


def enable_custom_widget_manager():
    CALLS.append("enable_custom_widget_manager")


def disable_custom_widget_manager():
    CALLS.append("disable_custom_widget_manager")
'''
#: Appended to the set-up cell: it took the Colab branch, pip succeeded, the widget
#: manager is on.  (IPython's ``system`` leaves pip's exit status in ``_exit_code``.)
CELL_CHECKS = '''

assert IN_COLAB, "the set-up cell did not take its Colab branch"
_status = get_ipython().user_ns.get("_exit_code")
assert _status == 0, f"%pip install exited with {_status}"
from google.colab import output as _output
assert _output.CALLS == ["enable_custom_widget_manager"], _output.CALLS
print("COLAB-SET-UP-CELL-OK")
'''
#: Run in the venv after a set-up cell that installs the `distributed` extra (notebook 10):
#: a small image in blocks on a 1-worker cluster, written as OME-Zarr, with Colab's dask.
AFTER_DISTRIBUTED_CELL = '''
import json

if __name__ == "__main__":
    import dask, ome_zarr, zarr
    from cellpose_nb import data
    from cellpose_nb.distributed import segment_large

    sample = data.make_synthetic((384, 384), n_cells=40, diameter=20.0, kind="nuclei", seed=0)
    segment_large(sample.image, "nuclei", out="masks.ome.zarr", diameter=20.0, block_size=192,
                  n_workers=1, device="cpu")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    labels = next(iter(Reader(parse_url("masks.ome.zarr/labels/masks"))())).data[0]
    labels = labels.compute() if hasattr(labels, "compute") else labels
    print("FACTS", json.dumps({"cells": int(len(set(labels.ravel().tolist())) - 1), "dask": dask.__version__,
                      "ome_zarr": ome_zarr.__version__, "zarr": zarr.__version__}))
'''
#: Run in the venv after the set-up cell, from Colab's working folder.
AFTER_CELL = '''
import json

import cellpose_nb
import ipywidgets
from cellpose_nb import data, model, predict
from cellpose_nb.widgets import DiffusionPlayer, FlowExplorer, ThresholdExplorer

sample = data.make_synthetic((128, 128), n_cells=6, diameter=20.0, kind="nuclei", seed=0)
net = model.load_pretrained("nuclei", device="cpu")
seg = predict.segment(sample.image, net, diameter=20.0, device="cpu")
explorers = (ThresholdExplorer.from_segmentation(sample.image, seg),
             FlowExplorer(sample.image, labels=seg.labels, flows=seg.flows, cellprob=seg.cellprob),
             DiffusionPlayer(sample.labels, 1))
widgets = [type(e.widget).__name__ for e in explorers]
print(json.dumps({"package": cellpose_nb.__file__, "cells": int(seg.labels.max()),
                  "widgets": widgets, "ipywidgets": ipywidgets.__version__}))
'''


def _setup_cells():
    """{set-up cell source: [notebooks]}: the first code cell naming REPO_URL, per notebook."""
    cells = {}
    paths = sorted(NOTEBOOKS.glob("[0-9]*.ipynb"))
    assert paths, f"no notebooks in {NOTEBOOKS}"
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        found = [c.source for c in nb.cells if c.cell_type == "code" and "REPO_URL" in c.source]
        assert found, f"{path.name}: no Colab set-up cell (a code cell with REPO_URL)"
        cells.setdefault(found[0], []).append(path.name)
    return cells


def _colab_marker_env():
    return {"python_version": COLAB_PYTHON, "python_full_version": f"{COLAB_PYTHON}.0",
            "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
            "platform_machine": "x86_64", "implementation_name": "cpython",
            "platform_python_implementation": "CPython", "extra": ""}


def _check_against_colab(requires, requires_python):
    """The package's declared requirements accept Colab's real versions (torch, Python 3.12)."""
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    colab = {"numpy": COLAB_NUMPY, "torch": COLAB_TORCH, "ipywidgets": COLAB_IPYWIDGETS,
             **{_canon(k): v for k, v in COLAB_OTHERS.items()}}
    marker_env = _colab_marker_env()
    problems = []
    if requires_python and not SpecifierSet(requires_python).contains(f"{COLAB_PYTHON}.0"):
        problems.append(f"Requires-Python {requires_python} excludes Colab's Python {COLAB_PYTHON}")
    for line in requires:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate(marker_env):
            continue  # an extra, or another platform
        version = colab.get(_canon(req.name))
        if version is not None and not req.specifier.contains(version, prereleases=True):
            problems.append(f"{line}: pip would replace Colab's {req.name} {version}")
    return problems


def test_colab_setup_cell_keeps_colab_versions_and_the_package_works(tmp_path, python311):
    cells = _setup_cells()
    venv = tmp_path / "colab-venv"
    env = _env(venv, tmp_path)
    python = _make_venv(python311, venv, env)
    _run([python, "-m", "pip", "install", *PIP_NET, "--quiet", f"pip=={COLAB_PIP}"],
         what="Colab's pip", timeout=300, env=env)
    preinstalled = [f"numpy=={COLAB_NUMPY}", f"torch=={TORCH_STAND_IN}", f"ipywidgets=={COLAB_IPYWIDGETS}",
                    *[f"{k}=={v}" for k, v in COLAB_OTHERS.items()]]
    _run([python, "-m", "pip", "install", *PIP_NET, "--quiet", *preinstalled],
         what="Colab's preinstalled packages", timeout=480, env=env)
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, env=env, check=True,
                                  cwd=_neutral_cwd(env)).stdout.strip())
    (purelib / "google" / "colab").mkdir(parents=True, exist_ok=True)
    (purelib / "google" / "colab" / "__init__.py").write_text(FAKE_COLAB_INIT)
    (purelib / "google" / "colab" / "output.py").write_text(FAKE_COLAB_OUTPUT)

    # REPO_URL: a local git repository holding the working tree, as GitHub would after a push
    repo = _copy_tree(tmp_path / "repo")
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost", "-c", "init.defaultBranch=main"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "the working tree"]):
        _run([*git, *cmd], what=f"git {cmd[0]}", timeout=120, cwd=repo)
    repo_url = repo.as_uri()  # file:///...; the cell installs "cellpose-nb @ git+file:///..."

    before = _versions(python, env)
    assert "cellpose-nb" not in before
    content = tmp_path / "content"  # Colab's working folder
    content.mkdir()
    for k, (source, names) in enumerate(cells.items()):
        cell, n = re.subn(r'^REPO_URL\s*=\s*"[^"\n]*"', f'REPO_URL = "{repo_url}"', source, flags=re.M)
        assert n == 1, f"{names}: the set-up cell must assign REPO_URL exactly once, as a string"
        script = tmp_path / f"setup_cell_{k}.py"
        script.write_text(cell + CELL_CHECKS)
        out = _run([venv / "bin" / "ipython", "--quick", "--no-banner", "--colors=NoColor",
                    "--TerminalInteractiveShell.term_title=False", "--HistoryManager.enabled=False", script],
                   what=f"the Colab set-up cell of {', '.join(names)}", timeout=420, env=env, cwd=content)
        assert "COLAB-SET-UP-CELL-OK" in out, f"the set-up cell of {names} did not finish:\n{out[-4000:]}"
        after = _versions(python, env)
        changed = {name: (v, after.get(name)) for name, v in before.items() if after.get(name) != v}
        assert not changed, (f"the set-up cell of {names} changed Colab's packages "
                             f"(name: (Colab's, after)): {changed}")
        assert "cellpose-nb" in after, f"the set-up cell of {names} did not install the package:\n{out[-3000:]}"
        print(f"Colab set-up cell of {len(names)} notebook(s) {names}: added "
              f"{sorted(set(after) - set(before))}, changed nothing")
        if "cellpose-nb[distributed]" in cell:
            check = tmp_path / "after_distributed_cell.py"
            check.write_text(AFTER_DISTRIBUTED_CELL)
            out = _run([python, check], what="segment_large with Colab's dask", timeout=300, env=env, cwd=content)
            facts = json.loads(next(line for line in out.splitlines() if line.startswith("FACTS "))[6:])
            assert facts["cells"] >= 20, f"segment_large found {facts['cells']} of 40 synthetic nuclei: {facts}"
            assert facts["dask"] == COLAB_OTHERS["dask"], facts
            print(f"segment_large after {names}' cell: {facts}")

    facts = json.loads(_run([python, "-c", AFTER_CELL], what="the package on Colab", timeout=300, env=env,
                            cwd=content).strip().splitlines()[-1])
    assert Path(facts["package"]).resolve().is_relative_to(purelib.resolve()), (
        f"cellpose_nb was not imported from the venv's site-packages: {facts}")
    assert facts["cells"] >= 3, f"segmentation of 6 synthetic nuclei found {facts['cells']}"
    assert facts["widgets"] == ["VBox", "VBox", "VBox"], facts
    assert facts["ipywidgets"] == COLAB_IPYWIDGETS, facts

    meta = json.loads(_run([python, "-c", (
        "import importlib.metadata as m, json; d = m.distribution('cellpose-nb'); "
        "print(json.dumps({'requires': d.requires or [], 'python': d.metadata['Requires-Python']}))")],
        what="the package's metadata", timeout=120, env=env).strip().splitlines()[-1])
    problems = _check_against_colab(meta["requires"], meta["python"])
    assert not problems, "the package's requirements conflict with Colab's real versions:\n" + "\n".join(problems)
