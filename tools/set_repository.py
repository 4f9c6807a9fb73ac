#!/usr/bin/env python
"""Point every link to the published repository at OWNER/NAME, in one command.

The one place that names the repository is ``pyproject.toml``::

    [tool.cellpose_nb]
    repository = "OWNER/cellpose_nb"

(``OWNER`` is the placeholder until the repository is published).  Everything
else that names it follows from that entry, and this tool rewrites it all:

* every notebook's Colab set-up cell (``REPO_URL = "https://github.com/..."``)
  and its "Open in Colab" badge, in the jupytext ``.py`` sources; the paired
  ``.ipynb`` are then regenerated with ``jupytext --to ipynb --update`` (cell
  ids kept, so the only diff is the address);
* the Colab badges in ``docs/course.md``, GitHub and GitHub Pages addresses
  in the docs and workflows, mybinder links;
* while the old value is the placeholder: the notes that say so (the
  notebooks' "(replace OWNER with ...)", Markdown between
  ``<!-- placeholder -->`` and ``<!-- /placeholder -->``, ...).

Afterwards no ``OWNER`` may be left: if one is (a new kind of mention this
tool does not know), nothing is written and the places are listed.

Usage::

    python tools/set_repository.py alice/cellpose_nb      # or: make set-repo REPO=alice/cellpose_nb
    python tools/set_repository.py --check                 # every address agrees with pyproject.toml?
    python tools/set_repository.py alice/cellpose_nb --root /tmp/copy   # another tree (tests)

The files are the repository's (``git ls-files`` when ``--root`` is a git work
tree, tracked and untracked but not ignored ones; else every file under it but
build outputs and environments).
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLACEHOLDER_OWNER = "OWNER"
#: pyproject.toml's entry: ``repository = "owner/name"`` in ``[tool.cellpose_nb]``.
TABLE = "tool.cellpose_nb"
KEY = "repository"
SLUG = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}$")
#: Files looked at (by suffix, or by name for those without one).
SUFFIXES = {".py", ".ipynb", ".md", ".toml", ".txt", ".yml", ".yaml", ".cfg", ".rst", ".html", ".json"}
NAMES = {"postBuild", "Makefile", "Dockerfile"}
#: Folders never looked into when --root is not a git work tree.
SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", ".ipynb_checkpoints",
             ".pytest_cache", "out", "build", "dist", "exercises", "runs", "_build"}
#: This tool and its test spell the placeholder out on purpose.
SELF = {"tools/set_repository.py", "tests/test_set_repository.py"}
#: Notes that only make sense while the repository is the placeholder: removed
#: (or reworded) when a real one is set.  Exact text, so that a reworded note
#: is caught by the final check instead of being half-edited.
PLACEHOLDER_NOTES = (
    # notebooks: after the "Open In Colab" badge
    (f" (replace {PLACEHOLDER_OWNER} with the repository's owner once it is published)", ""),
    # notebooks: the Colab set-up cell
    ("  # placeholder: the repository to install from", "  # the repository to install from"),
    # .github/workflows/book.yml
    (f"\n# ({PLACEHOLDER_OWNER}: the repository's owner, set once the repository is published).", ""),
)
#: Markdown that only makes sense while the repository is the placeholder.
PLACEHOLDER_BLOCK = re.compile(r"<!-- placeholder -->.*?<!-- /placeholder -->", re.S)


def _entry(text: str):
    """The match of ``repository = "..."`` inside pyproject.toml's ``[tool.cellpose_nb]`` table."""
    table = re.search(rf"^\[{re.escape(TABLE)}\]\s*$", text, re.M)
    if table is None:
        return None
    end = re.search(r"^\[", text[table.end():], re.M)
    body_end = table.end() + end.start() if end else len(text)
    return re.compile(rf'^({KEY}\s*=\s*)"([^"\n]*)"', re.M).search(text, table.end(), body_end)


def read_repository(root: Path) -> str:
    """The ``[tool.cellpose_nb] repository`` entry of ``root/pyproject.toml``."""
    m = _entry((root / "pyproject.toml").read_text(encoding="utf-8"))
    if m is None:
        raise SystemExit(f"{root / 'pyproject.toml'}: no [{TABLE}] {KEY} = \"owner/name\" entry")
    return m.group(2)


def _address_patterns(slug: str):
    """(regex, replacement template) for every way an address names ``slug``."""
    owner, name = slug.split("/")
    s = re.escape(slug)
    end = r"(?![A-Za-z0-9._-])"  # the slug ends here (so that OWNER/cellpose_nb2 is another repository)
    return [
        (re.compile(rf"(github\.com/|colab\.research\.google\.com/github/|mybinder\.org/v2/gh/){s}{end}"),
         r"\g<1>{slug}"),
        (re.compile(rf"(?<![A-Za-z0-9-]){re.escape(owner)}\.github\.io/{re.escape(name)}{end}"),
         "{owner}.github.io/{name}"),
    ]


def rewrite(text: str, old: str, new: str) -> str:
    """``text`` with every address of repository ``old`` pointing at ``new``."""
    owner, name = new.split("/")
    for pattern, template in _address_patterns(old):
        replacement = template.format(slug=new, owner=owner, name=name)
        text = pattern.sub(lambda m: m.expand(replacement), text)
    if old.split("/")[0] == PLACEHOLDER_OWNER and new.split("/")[0] != PLACEHOLDER_OWNER:
        for note, replacement in PLACEHOLDER_NOTES:
            text = text.replace(note, replacement)
        text = PLACEHOLDER_BLOCK.sub("", text)
    return text


def _set_pyproject_entry(text: str, new: str) -> str:
    m = _entry(text)
    if m is None:
        raise SystemExit(f"pyproject.toml: no [{TABLE}] {KEY} = \"owner/name\" entry")
    return text[:m.start()] + f'{m.group(1)}"{new}"' + text[m.end():]


def repository_files(root: Path) -> list[Path]:
    """The text files of the repository at ``root`` that may name it."""
    if (root / ".git").exists():
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=root, capture_output=True, text=True, check=True).stdout
        rel = sorted({p for p in out.split("\0") if p})
    else:
        rel = []
        for path in sorted(root.rglob("*")):
            parts = path.relative_to(root).parts
            if any(p in SKIP_DIRS or p.endswith(".egg-info") for p in parts[:-1]):
                continue
            if path.is_file():
                rel.append(path.relative_to(root).as_posix())
    keep = []
    for r in rel:
        p = root / r
        if r in SELF or not p.is_file():
            continue
        if p.suffix in SUFFIXES or p.name in NAMES:
            keep.append(p)
    return keep


def _is_jupytext_source(path: Path, text: str) -> bool:
    return path.suffix == ".py" and path.with_suffix(".ipynb").is_file() and "# %%" in text


def leftover_placeholders(root: Path, texts: dict[Path, str]) -> list[str]:
    """``file:line: text`` of every ``OWNER`` still there."""
    word = re.compile(rf"\b{PLACEHOLDER_OWNER}\b")
    found = []
    for path, text in texts.items():
        for k, line in enumerate(text.splitlines(), 1):
            if word.search(line):
                found.append(f"{path.relative_to(root)}:{k}: {line.strip()[:120]}")
    return found


def set_repository(new: str, root: Path = ROOT, *, jupytext=True) -> list[Path]:
    """Rewrite the tree at ``root`` for repository ``new``; return the files changed."""
    if not SLUG.match(new):
        raise SystemExit(f"{new!r} is not a GitHub repository as owner/name")
    old = read_repository(root)
    files = repository_files(root)
    texts = {}
    for path in files:
        try:
            texts[path] = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
    new_texts = {path: rewrite(text, old, new) for path, text in texts.items()}
    pyproject = root / "pyproject.toml"
    new_texts[pyproject] = _set_pyproject_entry(new_texts.get(pyproject, pyproject.read_text()), new)
    if new.split("/")[0] != PLACEHOLDER_OWNER:
        left = leftover_placeholders(root, new_texts)
        if left:
            raise SystemExit(
                "placeholder mentions this tool does not know how to rewrite (nothing was written):\n  "
                + "\n  ".join(left)
                + "\nreword them, or teach tools/set_repository.py (PLACEHOLDER_NOTES) about them")
    changed = [path for path, text in new_texts.items() if text != texts.get(path)]
    sources = [p for p in changed if _is_jupytext_source(p, new_texts[p])]
    if sources and jupytext and importlib.util.find_spec("jupytext") is None:
        raise SystemExit(f"jupytext is needed to regenerate the .ipynb ({sys.executable} has none; "
                         "make env-dev, or pip install jupytext): nothing was written")
    for path in changed:
        path.write_text(new_texts[path], encoding="utf-8")
    if sources and jupytext:
        # --update keeps the .ipynb's cell ids (and outputs, which are stored empty)
        subprocess.run([sys.executable, "-m", "jupytext", "--quiet", "--to", "ipynb", "--update",
                        *[str(p.relative_to(root)) for p in sources]], cwd=root, check=True)
        changed += [p.with_suffix(".ipynb") for p in sources if p.with_suffix(".ipynb") not in changed]
    return changed


#: The addresses that must name the configured repository (--check).
_COLAB = re.compile(r"colab\.research\.google\.com/github/([A-Za-z0-9._-]+/[A-Za-z0-9._-]+)/blob/[^/\s)]+/([^\s)\"]+)")
_REPO_URL = re.compile(r"REPO_URL = \\?\"https://github\.com/([A-Za-z0-9._-]+/[A-Za-z0-9._-]+?)(?:\.git)?\\?\"")


def check(root: Path = ROOT) -> list[str]:
    """Every Colab badge and ``REPO_URL`` names the configured repository and an existing notebook."""
    repo = read_repository(root)
    problems = []
    for path in repository_files(root):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        rel = path.relative_to(root)
        for k, line in enumerate(text.splitlines(), 1):
            for m in _COLAB.finditer(line):
                if m.group(1) != repo:
                    problems.append(f"{rel}:{k}: Colab link to {m.group(1)}, not {repo}")
                if not (root / m.group(2)).is_file():
                    problems.append(f"{rel}:{k}: Colab link to {m.group(2)}, which does not exist")
            for m in _REPO_URL.finditer(line):
                if m.group(1) != repo:
                    problems.append(f"{rel}:{k}: REPO_URL names {m.group(1)}, not {repo}")
    return problems


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("repository", nargs="?", help="owner/name on GitHub, e.g. alice/cellpose_nb")
    parser.add_argument("--check", action="store_true",
                        help="only check that every Colab link and REPO_URL names pyproject.toml's repository")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository's root (default: this one)")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    if args.check:
        problems = check(root)
        for p in problems:
            print(p)
        print(f"{len(problems)} problem(s); repository {read_repository(root)}")
        return 1 if problems else 0
    if not args.repository:
        parser.error("give the repository as owner/name (or --check)")
    old = read_repository(root)
    changed = set_repository(args.repository, root)
    for path in changed:
        print(path.relative_to(root))
    print(f"{old} -> {args.repository}: {len(changed)} file(s) changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
