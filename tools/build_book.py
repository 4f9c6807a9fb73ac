"""Build the course website: run the notebooks, then Jupyter Book 2 (mystmd) on them.

    python tools/build_book.py                  # QUICK mode (CELLPOSE_NB_QUICK=1), every notebook
    python tools/build_book.py --full           # full mode (CELLPOSE_NB_QUICK=0; 05 takes ~1 h on a CPU)
    python tools/build_book.py --notebooks 00 02 --out /tmp/book   # a subset (tests/test_book.py)

Steps: (1) every ``notebooks/[0-9]*.ipynb`` (stored without outputs, and left so)
runs with nbclient in ``notebooks/`` (as under nbval), QUICK or full, into
``<out>/src/notebooks/``; a run is cached in ``<out>/executed/<mode>/`` and reused
while the notebook and the package sources are unchanged.  A cell that raises
stops the build.  (2) ``book/myst.yml``, ``book/theme/`` and ``book/index.md``
(with the course table of ``docs/course.md`` filled in, notebook names linked to
their pages) join them in ``<out>/src/``.  (3) ``jupyter book build --html
--strict`` runs there; the site template in ``book/theme/`` renders the pages
(mystmd's default theme is downloaded at build time, which does not work
offline).  The site ends up in ``<out>/html/`` (default ``book/_build/html/``).

Needs the ``book`` extra (``pip install -e ".[book]"``: jupyter-book >= 2) and
Node.js >= 18 on PATH (Debian's ``nodejs``; installed here with apt-get when
missing and run as root).  Exit status 1 when a notebook fails or a page shows an
error output, 2 when a tool is missing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BOOK = REPO / "book"
NOTEBOOKS = REPO / "notebooks"
COURSE_MD = REPO / "docs" / "course.md"
TABLE_MARKER = "{course-table}"
CACHE_KEY = "cellpose_nb_book"


def log(message: str) -> None:
    print(f"build_book: {message}", flush=True)


def ensure_node() -> str:
    """Path of a Node.js >= 18 (mystmd's runtime); Debian's nodejs is installed when missing."""
    node = shutil.which("node")
    if node is None and shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0:
        log("installing Debian nodejs for jupyter-book ...")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "nodejs"], check=False, env=env)
        node = shutil.which("node")
    if node is None:
        raise SystemExit("build_book: Node.js not found; install it (apt-get install nodejs) and try again")
    version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    major = int(re.match(r"v(\d+)", version).group(1)) if re.match(r"v(\d+)", version) else 0
    if major < 18:
        raise SystemExit(f"build_book: jupyter-book needs Node.js >= 18, found {version} at {node}")
    return node


def check_jupyter_book() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("jupyter-book")
    except PackageNotFoundError:
        raise SystemExit('build_book: jupyter-book is not installed: pip install -e ".[book]" (or make book)') from None
    if int(found.split(".")[0]) < 2:
        raise SystemExit(f"build_book: needs jupyter-book >= 2 (mystmd), found {found}")
    return found


def select_notebooks(prefixes: list[str] | None) -> list[Path]:
    found = sorted(NOTEBOOKS.glob("[0-9]*.ipynb"))
    if not prefixes:
        return found
    chosen = [p for p in found if any(p.stem == q or p.stem.startswith(f"{q}_") for q in prefixes)]
    missing = [q for q in prefixes if not any(p.stem == q or p.stem.startswith(f"{q}_") for p in found)]
    if missing:
        raise SystemExit(f"build_book: no notebook matches {missing} in {NOTEBOOKS}")
    return chosen


def course_table(built: set[str]) -> str:
    """The table of docs/course.md, notebook names linked to the book pages, without the Colab column."""
    lines = COURSE_MD.read_text(encoding="utf-8").splitlines()
    start = next((k for k, line in enumerate(lines) if re.match(r"\|\s*notebook\s*\|", line)), None)
    if start is None:
        raise SystemExit(f"build_book: no course table (a row starting '| notebook |') in {COURSE_MD}")
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows.append(cells)
    header = [c.lower() for c in rows[0]]
    keep = [k for k, name in enumerate(header) if name != "open"]
    out = []
    for r, cells in enumerate(rows):
        cells = [cells[k] for k in keep if k < len(cells)]
        if r >= 2:
            stem = cells[0].strip("`")
            if stem in built:
                cells[0] = f"[`{stem}`](notebooks/{stem}.ipynb)"
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def package_digest() -> str:
    """Digest of the package sources: a cached notebook run is stale when they change."""
    h = hashlib.sha256()
    for path in sorted((REPO / "cellpose_nb").rglob("*")):
        if path.is_file() and path.suffix in {".py", ".json", ".safetensors", ".npy", ".tif", ".png"}:
            h.update(str(path.relative_to(REPO)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def execute(notebook: Path, target: Path, cache: Path, *, quick: bool, timeout: int | None, digest: str) -> float:
    """Run one notebook into ``target`` (from the cache when it is fresh); seconds spent."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    key = {"source": hashlib.sha256(notebook.read_bytes()).hexdigest(), "package": digest, "quick": quick}
    cached = cache / notebook.name
    if cached.is_file():
        nb = nbformat.read(cached, as_version=4)
        if nb.metadata.get(CACHE_KEY) == key:
            shutil.copyfile(cached, target)
            log(f"{notebook.name}: outputs from the cache ({cache})")
            return 0.0
    nb = nbformat.read(notebook, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    t0 = time.monotonic()
    log(f"{notebook.name}: running ({'QUICK' if quick else 'full'} mode) ...")
    try:
        client.execute()
    except CellExecutionError as exc:
        failed = cache.parent / "failed" / notebook.name
        failed.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, failed)
        print(str(exc)[-4000:], file=sys.stderr)
        raise SystemExit(f"build_book: {notebook.name} failed (its outputs so far: {failed})") from None
    seconds = time.monotonic() - t0
    nb.metadata[CACHE_KEY] = key
    cache.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, cached)
    shutil.copyfile(cached, target)
    log(f"{notebook.name}: {seconds:.0f} s")
    return seconds


def error_outputs(notebook: Path) -> list[str]:
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    return [f"{notebook.name} cell {k}: {o.get('ename')}: {o.get('evalue')}"
            for k, c in enumerate(nb["cells"]) if c["cell_type"] == "code"
            for o in c.get("outputs", []) if o.get("output_type") == "error"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="full mode (CELLPOSE_NB_QUICK=0) instead of QUICK")
    ap.add_argument("--out", type=Path, default=BOOK / "_build", help="build folder (default: book/_build)")
    ap.add_argument("--notebooks", nargs="+", metavar="NN", help="only these notebooks (number or stem)")
    ap.add_argument("--timeout", type=int, default=None,
                    help="seconds per cell (default: 900 in QUICK mode, none in full mode)")
    ap.add_argument("--template", default=None,
                    help="another MyST site template instead of book/theme (e.g. book-theme, needs the internet)")
    args = ap.parse_args(argv)

    t_start = time.monotonic()
    version = check_jupyter_book()
    ensure_node()
    quick = not args.full
    mode = "QUICK" if quick else "full"
    timeout = args.timeout if args.timeout is not None else (900 if quick else None)
    out = args.out.resolve()
    src = out / "src"
    notebooks = select_notebooks(args.notebooks)
    if not notebooks:
        raise SystemExit(f"build_book: no notebooks/[0-9]*.ipynb in {NOTEBOOKS}")
    log(f"jupyter-book {version}; {len(notebooks)} notebooks, {mode} mode; into {out}")

    if src.exists():
        shutil.rmtree(src)
    (src / "notebooks").mkdir(parents=True)
    shutil.copy2(BOOK / "myst.yml", src / "myst.yml")
    shutil.copytree(BOOK / "theme", src / "theme", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    index = (BOOK / "index.md").read_text(encoding="utf-8")
    if TABLE_MARKER in index:
        index = index.replace(TABLE_MARKER, course_table({p.stem for p in notebooks}))
    (src / "index.md").write_text(index, encoding="utf-8")
    if args.template:
        text = (src / "myst.yml").read_text(encoding="utf-8")
        (src / "myst.yml").write_text(re.sub(r"(?m)^(\s*template:\s*).*$", rf"\g<1>{args.template}", text),
                                      encoding="utf-8")

    # (1) run the notebooks: the kernel inherits this environment
    os.environ["CELLPOSE_NB_QUICK"] = "1" if quick else "0"
    os.environ.pop("MPLBACKEND", None)  # `make test` sets Agg, which would leave the pages without figures
    digest = package_digest()
    cache = out / "executed" / mode
    run_seconds = 0.0
    for nb in notebooks:
        run_seconds += execute(nb, src / "notebooks" / nb.name, cache, quick=quick, timeout=timeout, digest=digest)
    errors = [e for nb in notebooks for e in error_outputs(src / "notebooks" / nb.name)]
    if errors:
        raise SystemExit("build_book: error outputs in the executed notebooks:\n  " + "\n  ".join(errors))

    # (2)+(3) the site
    env = dict(os.environ)
    env.update({
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", os.defpath)]),
        "BOOK_PYTHON": sys.executable,  # runs theme/render.py (Pygments for the code)
        "BOOK_MODE": mode,
        "JB_ALLOW_NODEENV": "no",  # never download Node.js (ensure_node found one)
    })
    env.pop("BASE_URL", None)  # the theme writes relative links: the site works under any base URL
    t0 = time.monotonic()
    cmd = [sys.executable, "-m", "jupyter_book", "build", "--html", "--ci", "--strict"]
    log(f"{' '.join(cmd[2:])} in {src}")
    proc = subprocess.run(cmd, cwd=src, env=env)
    report_path = src / "_build" / "render-report.json"
    if proc.returncode != 0 or not report_path.is_file() or not (src / "_build" / "html" / "index.html").is_file():
        raise SystemExit(f"build_book: jupyter book build failed (exit status {proc.returncode})")
    html = out / "html"
    if html.exists():
        shutil.rmtree(html)
    shutil.move(str(src / "_build" / "html"), html)
    report = json.loads(report_path.read_text(encoding="utf-8"))
    shutil.copyfile(report_path, out / "render-report.json")
    log(f"site: {len(report['pages'])} pages, {report['figures']} figures, {report['search_records']} search "
        f"records; notebooks {run_seconds:.0f} s, site {time.monotonic() - t0:.0f} s, "
        f"all {time.monotonic() - t_start:.0f} s")
    if report["error_outputs"]:
        log("pages show error outputs: " + "; ".join(report["error_outputs"]))
        return 1
    log(f"open {html / 'index.html'}  (or: python -m http.server -d {html})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
