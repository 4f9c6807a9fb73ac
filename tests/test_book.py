"""The course website: built with Jupyter Book 2 and read in headless Chromium.

``tools/build_book.py`` (what ``make book`` runs) builds the site in QUICK mode
into a temporary folder, with every course notebook (about 6 minutes on 2
cores; ``00`` has the explorers and their static figures, ``02`` the search
word).  The HTML is
served on localhost; Chromium (Playwright, Debian's binary) opens the landing
page and every notebook page and checks that

* the page renders: its title (``<h1>`` and ``<title>``) is the notebook's;
* every ``<img>`` loaded (``naturalWidth > 0``) and the page shows one figure for
  every image output of the executed notebook, the explorers' static
  fallbacks included;
* no output shows an error: no error outputs and no traceback, on the page and
  in the executed notebook;
* the page asks for nothing outside localhost and raises no JavaScript error;
* the sidebar and the "Next" / "Previous" links lead to the right pages;
* the search box finds "heat diffusion" on the 02 page and the result opens it.

Needs the ``book`` extra (jupyter-book >= 2), Node.js, the ``playwright``
package and a Chromium binary; skipped when one is missing, except when
``CI=true``: then it fails (``make env-dev`` installs them).

Run only this:  python -m pytest tests/test_book.py -p no:cacheprovider
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import warnings
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"
REPO = Path(__file__).resolve().parents[1]
#: every course notebook, by its number ("00", ..., "04b", ...): each page is opened in the browser
NOTEBOOKS = tuple(p.stem.split("_")[0] for p in sorted((REPO / "notebooks").glob("[0-9]*.ipynb")))
SEARCH = "heat diffusion"
SEARCH_PAGE = "02"
BUILD_TIMEOUT_S = 1500  # every notebook runs in QUICK mode: about 6 minutes on 2 cores
IMAGE_MIMES = ("image/png", "image/jpeg", "image/svg+xml", "image/gif")
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
TRACEBACK = re.compile(r"Traceback \(most recent call last\)|^\w*(Error|Exception): ", re.M)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

with warnings.catch_warnings():
    warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
    pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _missing(message):
    if IN_CI:
        pytest.fail(f"CI needs this: {message}")
    pytest.skip(message)


@pytest.fixture(scope="module")
def chromium():
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _missing("the playwright package is not installed (pip install playwright)")
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        _missing("Chromium not found (apt-get install chromium, or set CHROMIUM=/path/to/chromium)")
    return path


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    """The site built by tools/build_book.py: (html folder, executed notebooks by number, report)."""
    try:
        found = version("jupyter-book")
    except PackageNotFoundError:
        _missing('jupyter-book is not installed (pip install -e ".[book]")')
    if int(found.split(".")[0]) < 2:
        _missing(f"jupyter-book >= 2 needed, found {found}")
    if shutil.which("node") is None:
        _missing("Node.js not found (apt-get install nodejs)")
    out = tmp_path_factory.mktemp("book")
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    cmd = [sys.executable, str(REPO / "tools" / "build_book.py"), "--out", str(out), "--notebooks", *NOTEBOOKS]
    log = out / "build.log"
    with open(log, "wb") as f:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT_S)
    text = log.read_text(errors="replace")
    assert proc.returncode == 0, f"build_book.py failed ({proc.returncode}):\n{text[-6000:]}"
    html = out / "html"
    assert (html / "index.html").is_file(), text[-3000:]
    executed = {p.stem.split("_")[0]: p for p in sorted((out / "src" / "notebooks").glob("*.ipynb"))}
    assert sorted(executed) == sorted(NOTEBOOKS), executed
    report = json.loads((out / "render-report.json").read_text())
    return html, executed, report


@pytest.fixture(scope="module")
def server(book):
    """An http.server on a free localhost port serving the site; its base URL."""
    html = book[0]

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(html)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def browser(chromium, server, tmp_path_factory):
    """A Chromium page that may only talk to the local server; (page, problems seen)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=chromium, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1300, "height": 900})
        problems = {"external": [], "js": [], "http": []}

        def route(r):
            if r.request.url.startswith(server) or r.request.url.startswith("data:"):
                r.continue_()
            else:
                problems["external"].append(r.request.url)
                r.abort()

        context.route("**/*", route)
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.on("pageerror", lambda exc: problems["js"].append(str(exc)))
        page.on("console", lambda msg: msg.type == "error" and problems["js"].append(msg.text))
        page.on("response", lambda resp: resp.status >= 400 and problems["http"].append(f"{resp.status} {resp.url}"))
        try:
            yield page, problems
        finally:
            context.close()


def _notebook(path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _title(nb):
    first = "".join(nb["cells"][0]["source"])
    return first.splitlines()[0].lstrip("#").strip()


def _outputs(nb):
    return [(c, o) for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]


def _text(output):
    if output.get("output_type") == "stream":
        text = output.get("text", "")
    elif output.get("output_type") == "error":
        text = "\n".join(output.get("traceback", []))
    else:
        text = output.get("data", {}).get("text/plain", "")
    return "".join(text) if isinstance(text, list) else text


def _pages(report):
    return {p["slug"]: p for p in report["pages"]}


def _plain_quotes(text):
    """mystmd typesets quotes (Cellpose's -> Cellpose’s): compare titles without that."""
    return text.translate(str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'}))


def _page_of(report, number):
    """The report entry of notebook ``number`` (its title starts with the number)."""
    return next(p for p in report["pages"] if p["title"].startswith(f"{number} "))


def _open(page, url):
    page.goto(url)
    page.wait_for_load_state("load")
    page.locator("h1.page-title").wait_for()


def _images_loaded(page):
    return page.evaluate("() => Array.from(document.images)"
                         ".map(i => ({src: i.src, ok: i.complete && i.naturalWidth > 0}))")


def test_executed_notebooks_have_no_errors(book):
    _, executed, _ = book
    for number, path in executed.items():
        nb = _notebook(path)
        outputs = _outputs(nb)
        assert outputs, f"{path.name}: no outputs, not executed?"
        errors = [o for _, o in outputs if o.get("output_type") == "error"]
        assert not errors, f"{path.name}: error outputs {[(o['ename'], o['evalue']) for o in errors]}"
        tracebacks = [_text(o)[:300] for _, o in outputs if TRACEBACK.search(_text(o))]
        assert not tracebacks, f"{path.name}: outputs that show an error: {tracebacks}"
    assert not (REPO / "notebooks").joinpath("00_quickstart.ipynb").read_text().count('"output_type"'), (
        "notebooks/00_quickstart.ipynb got outputs: the build must leave notebooks/ alone")


def test_landing_page(book, server, browser):
    html, executed, report = book
    page, problems = browser
    _open(page, server)
    assert page.locator("h1.page-title").inner_text().startswith("cellpose_nb")
    body = page.locator("article").inner_text()
    assert "CC0" in body and "CC BY 3.0" in body, "data attributions missing on the landing page"
    table = page.locator("article table").first
    assert table.locator("tr").count() >= 9, "the course table (from docs/course.md) is missing"
    for number in executed:  # the built notebooks are linked from the table, and the links work
        link = table.locator("a", has_text=re.compile(rf"^{number}_"))
        assert link.count() == 1, f"no link to notebook {number} in the course table"
        href = link.get_attribute("href")
        assert href == f"{_page_of(report, number)['slug']}/index.html", href
    assert all(i["ok"] for i in _images_loaded(page)), _images_loaded(page)
    assert not problems["external"] and not problems["js"] and not problems["http"], problems


@pytest.mark.parametrize("number", NOTEBOOKS)
def test_notebook_page(book, server, browser, number):
    html, executed, report = book
    page, problems = browser
    nb = _notebook(executed[number])
    entry = _page_of(report, number)
    _open(page, server + entry["path"])

    # renders, with the notebook's title
    title = page.locator("h1.page-title").inner_text().strip()  # as typeset by mystmd
    assert _plain_quotes(title) == _plain_quotes(_title(nb))
    assert page.title().startswith(title)
    assert page.locator(".code-cell").count() == sum(c["cell_type"] == "code" for c in nb["cells"])

    # every image loaded; one figure per image output, the explorers' static figures included
    images = _images_loaded(page)
    assert images and all(i["ok"] for i in images), [i["src"] for i in images if not i["ok"]]
    outputs = _outputs(nb)
    n_images = sum(any(m in o.get("data", {}) for m in IMAGE_MIMES) for _, o in outputs)
    assert page.locator(".output.figure img").count() == n_images > 0
    static = [c for c in nb["cells"] if c["cell_type"] == "code" and ".static(" in "".join(c["source"])]
    for cell in static:
        assert any(any(m in o.get("data", {}) for m in IMAGE_MIMES) for o in cell["outputs"]), (
            f"a static explorer figure is missing: {''.join(cell['source'])[:200]}")
    widgets = sum(WIDGET_MIME in o.get("data", {}) for _, o in outputs)
    assert page.locator(".widget-note").count() == widgets
    if number == "00":
        assert static and widgets, "00_quickstart should show explorers and their static figures"

    # no output shows an error
    assert page.locator("pre.output.error").count() == 0
    shown = page.locator(".cell-outputs").all_inner_texts()
    assert not [t for t in shown if TRACEBACK.search(t)], "an output on the page shows an error"
    assert entry["error_outputs"] == 0

    # navigation: the sidebar marks this page; Next and Previous lead to the neighbours
    assert page.locator(".sidebar li.current a").inner_text().strip() == title
    order = report["pages"]
    k = [p["slug"] for p in order].index(entry["slug"])
    page.locator("a.pager-prev").click()
    page.wait_for_load_state("load")
    assert page.locator("h1.page-title").inner_text().strip() == order[k - 1]["title"]
    page.go_back()
    page.locator("h1.page-title", has_text=title).wait_for()
    if k + 1 < len(order):
        page.locator("a.pager-next").click()
        page.wait_for_load_state("load")
        assert page.locator("h1.page-title").inner_text().strip() == order[k + 1]["title"]
    else:
        assert page.locator("a.pager-next").count() == 0
    assert not problems["external"] and not problems["js"] and not problems["http"], problems


def test_sidebar_reaches_every_page(book, server, browser):
    _, _, report = book
    page, problems = browser
    _open(page, server)
    links = page.locator(".sidebar a")
    assert links.count() == len(report["pages"])
    for k, entry in enumerate(report["pages"]):
        page.locator(".sidebar a").nth(k).click()
        page.wait_for_load_state("load")
        assert page.locator("h1.page-title").inner_text().strip() == entry["title"]
    assert not problems["external"] and not problems["js"] and not problems["http"], problems


def test_search(book, server, browser):
    _, _, report = book
    page, problems = browser
    target = _page_of(report, SEARCH_PAGE)
    _open(page, server)
    box = page.locator("#book-search")
    box.fill(SEARCH)
    results = page.locator("#book-search-results a.search-result")
    results.first.wait_for()
    hrefs = [results.nth(k).get_attribute("href") for k in range(results.count())]
    assert any(h.split("#")[0] == target["path"] for h in hrefs), hrefs
    assert SEARCH in results.first.inner_text().lower()
    results.first.click()
    page.wait_for_load_state("load")
    assert page.locator("h1.page-title").inner_text().strip() == target["title"]
    assert SEARCH in page.locator("article").inner_text().lower()
    box = page.locator("#book-search")  # a word that is nowhere: says so
    box.fill("zzqxjv")
    page.locator("#book-search-results .search-none").wait_for()
    assert not problems["external"] and not problems["js"] and not problems["http"], problems
