"""tools/set_repository.py: one command points every address at the published repository.

The rewrite runs on a copy of the working tree (the real address is not known
yet); ``--check`` runs on the tree itself, read-only.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jupytext
import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "set_repository.py"
PLACEHOLDER = "OWNER"
NEW = "alice-lab/cellpose-course"
#: every form an address of the placeholder repository takes in the tree
OLD_ADDRESSES = re.compile(rf"(github\.com/|colab\.research\.google\.com/github/|mybinder\.org/v2/gh/)"
                           rf"{PLACEHOLDER}/|{PLACEHOLDER}\.github\.io")

sys.path.insert(0, str(ROOT / "tools"))
import set_repository  # noqa: E402

sys.path.pop(0)


def _cells(path):
    """(cell_type, source, tags) of every cell, as tests/test_notebooks.py compares them."""
    nb = jupytext.read(path)
    return [(c.cell_type, c.source, tuple(c.metadata.get("tags", ()))) for c in nb.cells]


@pytest.fixture()
def tree(tmp_path):
    """The working tree's files (tracked, and untracked but not ignored) in a folder without git."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    dest = tmp_path / "tree"
    for rel in filter(None, out.split("\0")):
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    return dest


def _run_tool(*args, root):
    return subprocess.run([sys.executable, str(TOOL), *args, "--root", str(root)],
                          capture_output=True, text=True, timeout=300)


def test_the_tree_agrees_with_pyproject():
    """Every Colab badge and REPO_URL names pyproject.toml's repository, and an existing notebook."""
    proc = _run_tool("--check", root=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_set_repository_rewrites_every_address_and_keeps_pairs_in_sync(tree):
    notebooks = sorted((tree / "notebooks").glob("*.py"))
    assert notebooks
    in_sync = {p.stem for p in notebooks
               if p.with_suffix(".ipynb").is_file() and _cells(p) == _cells(p.with_suffix(".ipynb"))}
    files = set_repository.repository_files(tree)
    before = {p: p.read_text(encoding="utf-8") for p in files}
    assert set_repository.read_repository(tree) == f"{PLACEHOLDER}/cellpose_nb"
    assert any(OLD_ADDRESSES.search(t) for t in before.values())

    proc = _run_tool(NEW, root=tree)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert set_repository.read_repository(tree) == NEW

    word = re.compile(rf"\b{PLACEHOLDER}\b")
    for path in set_repository.repository_files(tree):
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(tree)
        left = [line for line in text.splitlines() if word.search(line)]
        assert not left, f"{rel}: the placeholder is still there: {left[:3]}"
        before_text = before.get(path, "")
        n_old = len(OLD_ADDRESSES.findall(before_text))
        if n_old:
            n_new = sum(text.count(form) for form in (
                f"github.com/{NEW}", f"colab.research.google.com/github/{NEW}/", "alice-lab.github.io/cellpose-course"))
            assert n_new >= n_old, f"{rel}: {n_old} addresses before, {n_new} of the new repository after"

    for p in notebooks:
        source = p.read_text(encoding="utf-8")
        if f'REPO_URL = "https://github.com/{PLACEHOLDER}' in before[p]:
            assert f'REPO_URL = "https://github.com/{NEW}"  # the repository to install from' in source, p.name
        m = re.search(r"colab\.research\.google\.com/github/([^/]+/[^/]+)/blob/main/(notebooks/[^)\s]+)", source)
        if m:
            assert m.group(1) == NEW and m.group(2) == f"notebooks/{p.stem}.ipynb", (p.name, m.groups())
        if p.stem in in_sync:
            ipynb = p.with_suffix(".ipynb")
            assert _cells(p) == _cells(ipynb), f"{p.stem}: .py and .ipynb differ after the rewrite"
            old_nb, new_nb = json.loads(before[ipynb]), json.loads(ipynb.read_text(encoding="utf-8"))
            assert [c.get("id") for c in old_nb["cells"]] == [c.get("id") for c in new_nb["cells"]], (
                f"{ipynb.name}: cell ids changed (the rewrite should be the only diff)")
            assert all(not c.get("outputs") and c.get("execution_count") is None
                       for c in new_nb["cells"] if c["cell_type"] == "code"), f"{ipynb.name} got outputs"

    # the docs say it in words too, and the consistency check agrees with the new address
    assert "<!-- placeholder -->" not in (tree / "docs" / "course.md").read_text()
    proc = _run_tool("--check", root=tree)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    # and again, from one real repository to another (a fork): no placeholder notes involved
    proc = _run_tool("bob/cellpose_nb", root=tree)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for path in set_repository.repository_files(tree):
        assert "alice-lab/cellpose-course" not in path.read_text(encoding="utf-8"), path


def test_unknown_placeholder_mentions_stop_the_rewrite(tree):
    """A mention of the placeholder the tool cannot rewrite: nothing is written, the place is named."""
    doc = tree / "docs" / "new_page.md"
    doc.write_text(f"Fork it: replace {PLACEHOLDER} with your name.\n")
    snapshot = {p: p.read_bytes() for p in set_repository.repository_files(tree)}
    proc = _run_tool(NEW, root=tree)
    assert proc.returncode != 0
    assert "docs/new_page.md:1" in proc.stdout + proc.stderr
    assert {p: p.read_bytes() for p in set_repository.repository_files(tree)} == snapshot


@pytest.mark.parametrize("bad", ["alice", "alice/", "/x", "a b/c", "alice/repo/extra", "al_ice/x"])
def test_rejects_what_is_not_owner_slash_name(tree, bad):
    proc = _run_tool(bad, root=tree)
    assert proc.returncode != 0 and "owner/name" in proc.stdout + proc.stderr


def test_rewrite_touches_only_addresses_of_the_repository():
    text = ("see https://github.com/OWNER/cellpose_nb and https://github.com/OWNER/cellpose_nb2, "
            "https://github.com/MouseLand/cellpose, https://OWNER.github.io/cellpose_nb/")
    out = set_repository.rewrite(text, "OWNER/cellpose_nb", "alice/cp")
    assert out == ("see https://github.com/alice/cp and https://github.com/OWNER/cellpose_nb2, "
                   "https://github.com/MouseLand/cellpose, https://alice.github.io/cp/")
