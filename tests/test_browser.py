"""The explorers in a real browser: JupyterLab + headless Chromium (Playwright).

A notebook that builds a ThresholdExplorer and a FlowExplorer is written to a
temporary folder, JupyterLab serves it, Chromium runs all cells, waits for
the widgets, moves the cellprob slider with the keyboard and checks, on the
page, that the cell count changed and, on screenshots, that the displayed
masks changed; then it clicks on a cell in the flow explorer's figure and
checks that the picked pixel (the row and column sliders) became the clicked
one and that the figure changed (clicks travel through ipyevents); last it
clicks on a cell in a VolumeExplorer's XY view and checks that this cell was
picked and the XZ cut redrawn.

Needs the ``playwright`` Python package and a Chromium binary (Debian's
``chromium``; Playwright's own browser download is not used).  Skipped when
either is missing, except when ``CI=true``: then it fails.

Run only this:  python -m pytest tests/test_browser.py -m browser -p no:cacheprovider
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"
REPO = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SERVER_START_S = 60  # JupyterLab up and answering
WIDGET_RENDER_S = 90  # kernel start, imports, numba cache load, first update
SLIDER_PRESSES = 12  # ArrowRight presses on the cellprob slider: +3.0 at step 0.25

# "browser" is registered in pyproject.toml's markers; while it is not, creating
# the mark warns (an error under filterwarnings=error), hence the guard.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
    pytestmark = [pytest.mark.browser, pytest.mark.slow]

NOTEBOOK_CODE = """\
import numpy as np
from cellpose_nb.data import make_synthetic
from cellpose_nb.flows import masks_to_flows
from cellpose_nb.widgets import ThresholdExplorer

sample = make_synthetic((256, 256), n_cells=30, diameter=30, seed=4)
truth = sample.labels
rng = np.random.default_rng(0)
level = rng.uniform(1.0, 5.0, truth.max() + 1)  # each cell its own confidence
cellprob = np.where(truth > 0, level[truth], -4.0).astype(np.float32)
explorer = ThresholdExplorer(sample.image, masks_to_flows(truth), cellprob, truth=truth,
                             cellprob_range=(-2.0, 6.0), view_format="png")
explorer
"""

FLOW_CODE = """\
from cellpose_nb.widgets import VIEW_DPI, FlowExplorer

flows_explorer = FlowExplorer(sample.image, labels=truth)
target = tuple(int(v) for v in np.argwhere(truth == 5)[10])
x, y = flows_explorer.view_position(*target, panel=1)  # on the flow panel
fig = flows_explorer._fig
w, h = fig.get_figwidth() * VIEW_DPI, fig.get_figheight() * VIEW_DPI
print(f"CLICK {x / w:.6f} {y / h:.6f} {target[0]} {target[1]}")
flows_explorer
"""

VOLUME_CODE = """\
from cellpose_nb.data.synthetic3d import make_synthetic_volume
from cellpose_nb.widgets import VolumeExplorer

vol = make_synthetic_volume((16, 64, 64), n_cells=6, diameter=24, anisotropy=2.0, seed=1)
volume_explorer = VolumeExplorer(vol.image, vol.labels, anisotropy=2.0, channel_axis=-1)
plane = vol.labels[volume_explorer.position[0]]
vrow, vcol = (int(v) for v in np.argwhere(plane > 0)[len(np.argwhere(plane > 0)) // 2])
print(f"VOLPICK {(vcol + 0.5) / 64:.6f} {(vrow + 0.5) / 64:.6f} {plane[vrow, vcol]}")
volume_explorer
"""


def _missing(message):
    if IN_CI:
        pytest.fail(f"CI needs this: {message}")
    pytest.skip(message)


@pytest.fixture
def chromium():
    """Path of the Chromium binary, once Playwright and Chromium are known to be there."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _missing("the playwright package is not installed (pip install playwright)")
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        _missing("Chromium not found (apt-get install chromium, or set CHROMIUM=/path/to/chromium)")
    return path


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_settings(folder):
    """JupyterLab user settings: start the notebook's kernel without asking, no news toast."""
    import json

    for plugin, values in {
        "@jupyterlab/notebook-extension/tracker": {"autoStartDefaultKernel": True},
        "@jupyterlab/apputils-extension/notification": {"fetchNews": "false"},
    }.items():
        path = folder / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


def _write_notebook(folder):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(NOTEBOOK_CODE), nbformat.v4.new_code_cell(FLOW_CODE),
                nbformat.v4.new_code_cell(VOLUME_CODE)]
    path = folder / "explorer.ipynb"
    nbformat.write(nb, path)
    return path.name


@pytest.fixture
def jupyter_lab(tmp_path, chromium):
    """A JupyterLab server on a free port, serving ``tmp_path / "root"``; stopped afterwards."""
    root = tmp_path / "root"
    root.mkdir()
    name = _write_notebook(root)
    _write_settings(tmp_path / "settings")
    token = secrets.token_hex(16)
    port = _free_port()
    env = dict(os.environ)
    env.update({
        "PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "IPYTHONDIR": str(tmp_path / "ipython"),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
    })
    log = open(tmp_path / "jupyter.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}",
         "--ServerApp.ip=127.0.0.1", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={root}", f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}",
         f"--LabApp.user_settings_dir={tmp_path / 'settings'}", "--LabApp.news_url=",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         "--LabApp.extension_manager=readonly"]
        + (["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []),
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited ({proc.returncode}):\n{_tail(tmp_path)}")
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"jupyter lab did not start in {SERVER_START_S} s:\n{_tail(tmp_path)}")
            time.sleep(0.5)
        yield f"{base}/lab/tree/{name}?token={token}"
    finally:
        _stop(proc, base, token)
        log.close()


def _tail(tmp_path, n=3000):
    return (tmp_path / "jupyter.log").read_bytes()[-n:].decode(errors="replace")


def _stop(proc, base, token):
    """Ask the server to shut down (it stops its kernels), then make sure it is gone."""
    if proc.poll() is None:
        try:
            req = urllib.request.Request(f"{base}/api/shutdown?token={token}", method="POST")
            urllib.request.urlopen(req, timeout=5).close()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)


def _count(text):
    m = re.search(r"(\d+) cells", text)
    assert m, f"no cell count in {text!r}"
    return int(m.group(1))


def test_explorers_in_jupyterlab(chromium, jupyter_lab, tmp_path):
    from PIL import Image
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=chromium, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 1000},
        )
        try:
            page = context.new_page()
            page.set_default_timeout(30_000)
            console = []
            page.on("console", lambda msg: console.append(msg.text))
            page.goto(jupyter_lab)
            page.locator(".jp-Notebook .jp-Cell").first.wait_for()
            # the kernel starts by itself (settings); should JupyterLab still ask, accept
            page.wait_for_timeout(1000)
            if page.locator(".jp-Dialog").count():
                page.locator(".jp-Dialog .jp-mod-accept").click()
            # wait for the kernel ("Python 3 (ipykernel) | Idle" in the status bar), then
            # Run > Run All Cells (the menu, as a learner would); should the command not
            # be taken yet (prompt still "[ ]:"), try again
            page.locator(".jp-StatusBar-Widget", has_text=re.compile(r"\| Idle")).first.wait_for(
                timeout=SERVER_START_S * 1000)
            for attempt in range(3):
                page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
                page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
                try:
                    page.locator(".jp-InputPrompt", has_text=re.compile(r"\[(\*|\d+)\]")).first.wait_for(
                        timeout=10_000)
                    break
                except PlaywrightTimeout:
                    page.keyboard.press("Escape")  # close a menu left open
            else:
                raise AssertionError("Run All Cells did not start the notebook")

            status = page.locator(".cellpose-nb-count")
            view = page.locator("img.cellpose-nb-masks")
            status.wait_for(timeout=WIDGET_RENDER_S * 1000)
            view.wait_for()
            page.wait_for_function("() => { const i = document.querySelector('img.cellpose-nb-masks');"
                                   " return i && i.complete && i.naturalWidth > 0; }")
            text_before = status.inner_text()
            src_before = view.get_attribute("src")
            view.screenshot(path=tmp_path / "before.png")

            # move the cellprob slider with the keyboard: focus its handle, press ArrowRight
            handle = page.locator(".cellpose-nb-cellprob-threshold .noUi-handle")
            handle.focus()
            for _ in range(SLIDER_PRESSES):
                handle.press("ArrowRight")
            # query the elements afresh on every poll: the HTML widget replaces its
            # content (a kept element handle would go stale and keep the old text)
            page.wait_for_function(
                "want => parseFloat(document.querySelector("
                "'.cellpose-nb-cellprob-threshold .widget-readout').textContent) === want",
                arg=0.25 * SLIDER_PRESSES,
            )
            page.wait_for_function(
                "before => !document.querySelector('.cellpose-nb-count').textContent.includes(before)",
                arg=text_before.split(",")[0],
                timeout=WIDGET_RENDER_S * 1000,
            )
            page.wait_for_function(
                "before => { const i = document.querySelector('img.cellpose-nb-masks');"
                " return i.getAttribute('src') !== before && i.complete && i.naturalWidth > 0; }",
                arg=src_before,
            )
            page.wait_for_timeout(300)  # let the new image paint
            text_after = status.inner_text()
            view.screenshot(path=tmp_path / "after.png")

            # the flow explorer: click on a pixel of cell 5 in the flow panel
            flows_view = page.locator("img.cellpose-nb-flows")
            flows_view.scroll_into_view_if_needed(timeout=WIDGET_RENDER_S * 1000)
            page.wait_for_function("() => { const i = document.querySelector('img.cellpose-nb-flows');"
                                   " return i && i.complete && i.naturalWidth > 0; }")
            line = page.locator("[data-mime-type='application/vnd.jupyter.stdout']", has_text="CLICK").inner_text()
            fx, fy, row, col = line.split("CLICK")[1].split()
            flows_src = flows_view.get_attribute("src")
            flows_view.screenshot(path=tmp_path / "flows_before.png")
            box = flows_view.bounding_box()
            page.mouse.click(box["x"] + float(fx) * box["width"], box["y"] + float(fy) * box["height"])
            page.wait_for_function(
                "want => ['row', 'col'].every((k, i) => parseInt(document.querySelector("
                "`.cellpose-nb-${k} .widget-readout`).textContent) === want[i])",
                arg=[int(row), int(col)], timeout=WIDGET_RENDER_S * 1000,
            )
            page.wait_for_function(
                "before => { const i = document.querySelector('img.cellpose-nb-flows');"
                " return i.getAttribute('src') !== before && i.complete && i.naturalWidth > 0; }",
                arg=flows_src,
            )
            page.wait_for_timeout(300)
            flows_view.screenshot(path=tmp_path / "flows_after.png")

            # the volume explorer: click on a cell in the XY view; the XZ cut moves through it
            xy_view, xz_view = page.locator("img.cellpose-nb-volume-xy"), page.locator("img.cellpose-nb-volume-xz")
            xy_view.scroll_into_view_if_needed(timeout=WIDGET_RENDER_S * 1000)
            line = page.locator("[data-mime-type='application/vnd.jupyter.stdout']", has_text="VOLPICK").inner_text()
            fx, fy, picked = line.split("VOLPICK")[1].split()
            xz_src = xz_view.get_attribute("src")
            box = xy_view.bounding_box()
            page.mouse.click(box["x"] + float(fx) * box["width"], box["y"] + float(fy) * box["height"])
            page.wait_for_function(
                "want => document.querySelector('.cellpose-nb-volume-cell').textContent.trim() === want",
                arg=f"cell {picked}", timeout=WIDGET_RENDER_S * 1000,
            )
            page.wait_for_function(
                "before => document.querySelector('img.cellpose-nb-volume-xz').getAttribute('src') !== before",
                arg=xz_src,
            )
            page.screenshot(path=tmp_path / "page.png")
        except Exception:
            page.screenshot(path=tmp_path / "failure.png")  # what the page showed, for debugging
            raise
        finally:
            context.close()

    assert _count(text_after) < _count(text_before), (text_before, text_after)
    before = np.asarray(Image.open(tmp_path / "before.png").convert("RGB"), dtype=np.int16)
    after = np.asarray(Image.open(tmp_path / "after.png").convert("RGB"), dtype=np.int16)
    assert before.shape == after.shape and before.shape[0] >= 256
    changed = (np.abs(after - before).max(axis=-1) > 0).mean()
    assert changed > 0.005, f"only {changed:.4%} of the view's pixels changed (see {tmp_path})"
    before = np.asarray(Image.open(tmp_path / "flows_before.png").convert("RGB"), dtype=np.int16)
    after = np.asarray(Image.open(tmp_path / "flows_after.png").convert("RGB"), dtype=np.int16)
    assert before.shape == after.shape
    changed = (np.abs(after - before).max(axis=-1) > 0).mean()
    assert changed > 0.002, f"only {changed:.4%} of the flow view's pixels changed (see {tmp_path})"
