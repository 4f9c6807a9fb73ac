"""Render a MyST (Jupyter Book 2) site to static HTML: this template's ``build.render``.

``jupyter book build --html`` parses the pages (Markdown and executed notebooks)
into MyST AST, writes the search index and the figures, serves them on a local
content server and runs this script with

* ``CONTENT_CDN``: that server (``/config.json``, ``/content/<slug>.json``,
  ``/myst.search.json`` and the figures and downloads under ``/``);
* ``BUILD_DIRECTORY``: where the HTML goes.

Written here: ``index.html`` (the project's index page) and ``<slug>/index.html``
for every other page, with a sidebar (the table of contents), previous/next links
and a search box (``_static/book.js`` over ``_static/search-index.js``, the
site's ``myst.search.json``); figures and the executed notebooks under
``build/``.  Every link is relative, so the site works under any base URL (GitHub
Pages' ``/REPO/``) and from ``file://``; nothing is loaded from the internet: a
remote image is shown as its alt text (a link stays a link).

Standard library only (Pygments highlights the code when it imports).  Problems
go to stderr (mystmd shows them) and ``render-report.json`` beside the HTML
folder: pages, figures, error outputs, node types this renderer does not know.
"""

from __future__ import annotations

import html
import json
import os
import posixpath
import re
import shutil
import sys
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
IMAGE_MIMES = ("image/svg+xml", "image/png", "image/jpeg", "image/gif", "image/webp")
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
INLINE_TAGS = {
    "emphasis": "em", "strong": "strong", "delete": "del", "underline": "u",
    "subscript": "sub", "superscript": "sup", "smallcaps": "span", "keyboard": "kbd",
}

try:  # optional: syntax highlighting
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import get_lexer_by_name
    from pygments.util import ClassNotFound
except ImportError:  # pragma: no cover - depends on the Python running the build
    highlight = None


def esc(text) -> str:
    return html.escape(str(text), quote=True)


class Site:
    """The content server's view of the site, and what has been written so far."""

    def __init__(self, cdn: str, out: Path):
        self.cdn = cdn.rstrip("/")
        self.out = out
        # the content server is on localhost: never through an http_proxy of the environment
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self.assets: dict[str, str] = {}  # server path -> file name under build/
        self.report = {"pages": [], "figures": 0, "error_outputs": [], "unknown_nodes": Counter(),
                       "missing_assets": [], "remote_images": []}

    def get(self, path: str) -> bytes:
        url = self.cdn + urllib.parse.quote(path if path.startswith("/") else "/" + path)
        with self.opener.open(url, timeout=60) as response:
            return response.read()

    def json(self, path: str):
        return json.loads(self.get(path).decode("utf-8"))

    def asset(self, server_path: str) -> str | None:
        """Copy a file the content server has under ``/`` into ``build/``; its name there."""
        if server_path in self.assets:
            return self.assets[server_path]
        name = posixpath.basename(urllib.parse.urlparse(server_path).path)
        if not name or name == "undefined":
            return None
        try:
            data = self.get("/" + name)
        except OSError as exc:
            self.report["missing_assets"].append(server_path)
            warn(f"could not fetch {server_path}: {exc}")
            return None
        target = self.out / "build" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        self.assets[server_path] = name
        return name


def warn(message: str) -> None:
    print(f"render.py: {message}", file=sys.stderr, flush=True)


def is_local(url: str) -> bool:
    return url.startswith("/") and not url.startswith("//")


class Page:
    """Renders one page's MyST AST to HTML; ``root`` is the relative path to the site root."""

    def __init__(self, site: Site, slugs: dict[str, str], slug: str, root: str):
        self.site, self.slugs, self.slug, self.root = site, slugs, slug, root
        self.errors = 0
        self.figures = 0

    # ---- links
    def page_href(self, url: str) -> str | None:
        """A relative link for a site-internal URL (``/slug#id``), None if not a page."""
        path, _, fragment = url.partition("#")
        path = path.strip("/")
        if path not in self.slugs:
            return None
        href = self.root + self.slugs[path]
        if path == self.slug and fragment:
            href = ""
        return href + (f"#{fragment}" if fragment else "")

    def href(self, node) -> str:
        url = node.get("url") or ""
        if url.startswith("#"):
            return url
        if is_local(url):
            page = self.page_href(url)
            if page is not None:
                return page
            name = self.site.asset(url)
            if name:
                return f"{self.root}build/{name}"
        return url

    # ---- nodes
    def children(self, node) -> str:
        return "".join(self.node(c) for c in node.get("children") or [])

    def node(self, node) -> str:  # noqa: C901 - one branch per node type
        t = node.get("type")
        if node.get("visibility") == "remove":
            return ""
        method = getattr(self, f"n_{t}", None)
        if method is not None:
            out = method(node)
        elif t in INLINE_TAGS:
            cls = ' class="smallcaps"' if t == "smallcaps" else ""
            tag = INLINE_TAGS[t]
            out = f"<{tag}{cls}>{self.children(node)}</{tag}>"
        else:
            self.site.report["unknown_nodes"][t] += 1
            inner = self.children(node) if node.get("children") else esc(node.get("value", ""))
            out = f'<div class="node-{esc(t)}">{inner}</div>' if _is_block(node) else inner
        if node.get("visibility") == "hide":
            out = f"<details><summary>Show</summary>{out}</details>"
        return out

    def n_root(self, node):
        return self.children(node)

    def n_block(self, node):
        kind = node.get("kind") or ""
        cls = {"notebook-code": "cell code-cell", "notebook-content": "cell text-cell"}.get(kind, "block")
        ident = f' id="{esc(node["html_id"])}"' if node.get("html_id") else ""
        return f'<div class="{cls}"{ident}>{self.children(node)}</div>\n'

    def n_text(self, node):
        return esc(node.get("value", ""))

    def n_paragraph(self, node):
        return f"<p>{self.children(node)}</p>\n"

    def n_heading(self, node):
        depth = min(max(int(node.get("depth", 2)), 1), 6)
        ident = node.get("html_id") or node.get("identifier")
        anchor = f' id="{esc(ident)}"' if ident else ""
        link = f'<a class="anchor" href="#{esc(ident)}" aria-label="link to this section">#</a>' if ident else ""
        return f"<h{depth}{anchor}>{self.children(node)}{link}</h{depth}>\n"

    def n_inlineCode(self, node):
        return f"<code>{esc(node.get('value', ''))}</code>"

    def n_code(self, node):
        lang = node.get("lang") or ""
        code = node.get("value", "")
        body = None
        if highlight is not None and lang:
            try:
                body = highlight(code, get_lexer_by_name(lang), HtmlFormatter(nowrap=True))
            except ClassNotFound:
                body = None
        if body is None:
            body = esc(code)
        cls = "cell-input" if node.get("executable") else "code-block"
        lang_cls = f" language-{esc(lang)}" if lang else ""
        return f'<pre class="{cls} highlight{lang_cls}"><code>{body}</code></pre>\n'

    def n_link(self, node):
        inner = self.children(node) or esc(node.get("url", ""))
        href = self.href(node)
        ext = "" if not re.match(r"https?://", href) else ' rel="noopener"'
        return f'<a href="{esc(href)}"{ext}>{inner}</a>'

    def n_crossReference(self, node):
        url = node.get("url") or ""
        ident = node.get("html_id") or node.get("identifier") or ""
        href = self.page_href(f"{url}#{ident}") if url else f"#{ident}"
        inner = self.children(node) or esc(node.get("label") or ident)
        return f'<a class="xref" href="{esc(href or "#" + ident)}">{inner}</a>'

    def n_image(self, node):
        url = node.get("url") or ""
        alt = node.get("alt") or node.get("title") or ""
        name = self.site.asset(url) if is_local(url) else None
        if not name:  # remote, or mystmd could not download it (offline): keep the words
            self.site.report["remote_images"].append(node.get("urlSource") or url)
            return f'<span class="remote-image">{esc(alt or "image")}</span>'
        width = f' style="width:{esc(node["width"])}"' if node.get("width") else ""
        return f'<img src="{self.root}build/{esc(name)}" alt="{esc(alt)}"{width}>'

    def n_list(self, node):
        tag = "ol" if node.get("ordered") else "ul"
        start = f' start="{int(node["start"])}"' if node.get("ordered") and node.get("start") not in (None, 1) else ""
        return f"<{tag}{start}>{self.children(node)}</{tag}>\n"

    def n_listItem(self, node):
        checked = node.get("checked")
        box = "" if checked is None else f'<input type="checkbox" disabled{" checked" if checked else ""}> '
        return f"<li>{box}{self.children(node)}</li>\n"

    def n_blockquote(self, node):
        return f"<blockquote>{self.children(node)}</blockquote>\n"

    def n_thematicBreak(self, node):
        return "<hr>\n"

    def n_break(self, node):
        return "<br>"

    def n_html(self, node):
        return node.get("value", "")

    def n_comment(self, node):
        return ""

    def n_mystTarget(self, node):
        return f'<span id="{esc(node.get("label", ""))}"></span>'

    def n_math(self, node):
        if node.get("html"):
            inner = node["html"]
        else:
            inner = f"<code>{esc(node.get('value', ''))}</code>"
        ident = f' id="{esc(node["html_id"])}"' if node.get("html_id") else ""
        return f'<div class="math display"{ident}>{inner}</div>\n'

    def n_inlineMath(self, node):
        return f'<span class="math inline">{node.get("html") or esc(node.get("value", ""))}</span>'

    def n_table(self, node):
        return f'<div class="table-wrap"><table>{self.children(node)}</table></div>\n'

    def n_tableRow(self, node):
        return f"<tr>{self.children(node)}</tr>\n"

    def n_tableCell(self, node):
        tag = "th" if node.get("header") else "td"
        align = f' style="text-align:{esc(node["align"])}"' if node.get("align") else ""
        return f"<{tag}{align}>{self.children(node)}</{tag}>"

    def n_admonition(self, node):
        kind = esc(node.get("kind") or "note")
        return f'<aside class="admonition {kind}">{self.children(node)}</aside>\n'

    def n_admonitionTitle(self, node):
        return f'<p class="admonition-title">{self.children(node)}</p>'

    def n_container(self, node):
        ident = f' id="{esc(node["html_id"])}"' if node.get("html_id") else ""
        return f'<figure class="{esc(node.get("kind") or "figure")}"{ident}>{self.children(node)}</figure>\n'

    def n_caption(self, node):
        return f"<figcaption>{self.children(node)}</figcaption>"

    def n_legend(self, node):
        return f'<div class="legend">{self.children(node)}</div>'

    def n_abbreviation(self, node):
        return f'<abbr title="{esc(node.get("title", ""))}">{self.children(node)}</abbr>'

    def n_footnoteReference(self, node):
        ident = esc(node.get("identifier", ""))
        label = esc(node.get("enumerator") or node.get("label") or ident)
        return f'<sup class="footnote-ref"><a href="#fn-{ident}" id="fnref-{ident}">{label}</a></sup>'

    def n_footnoteDefinition(self, node):
        ident = esc(node.get("identifier", ""))
        label = esc(node.get("enumerator") or node.get("label") or ident)
        return (f'<div class="footnote" id="fn-{ident}"><span class="footnote-label">{label}</span>'
                f"{self.children(node)}</div>\n")

    def n_cite(self, node):
        inner = self.children(node) or esc(node.get("label") or node.get("identifier") or "")
        ref = (self.site_refs.get(node.get("label")) or {}) if hasattr(self, "site_refs") else {}
        url = ref.get("doi") and f"https://doi.org/{ref['doi']}" or ref.get("url")
        if not url and re.match(r"10\.\d{4,}/", node.get("label") or ""):
            url = f"https://doi.org/{node['label']}"
        return f'<a class="cite" href="{esc(url)}">{inner}</a>' if url else f'<cite>{inner}</cite>'

    def n_citeGroup(self, node):
        return "(" + "; ".join(self.node(c) for c in node.get("children") or []) + ")"

    def n_definitionList(self, node):
        return f"<dl>{self.children(node)}</dl>\n"

    def n_definitionTerm(self, node):
        return f"<dt>{self.children(node)}</dt>"

    def n_definitionDescription(self, node):
        return f"<dd>{self.children(node)}</dd>"

    def n_details(self, node):
        return f"<details>{self.children(node)}</details>\n"

    def n_summary(self, node):
        return f"<summary>{self.children(node)}</summary>"

    def n_span(self, node):
        return f"<span>{self.children(node)}</span>"

    def n_div(self, node):
        return f"<div>{self.children(node)}</div>\n"

    def n_mystDirective(self, node):
        return self.children(node)

    def n_mystRole(self, node):
        return self.children(node)

    # ---- notebook outputs
    def n_outputs(self, node):
        inner = self.children(node)
        return f'<div class="cell-outputs">{inner}</div>\n' if inner else ""

    def n_output(self, node):
        jd = node.get("jupyter_data") or {}
        kind = jd.get("output_type")
        if kind == "stream":
            text = jd.get("text")
            if text is None and jd.get("path"):
                text = self.site.get(jd["path"]).decode("utf-8", "replace")
            text = ANSI.sub("", "".join(text) if isinstance(text, list) else text or "")
            name = jd.get("name", "stdout")
            return f'<pre class="output stream {esc(name)}">{esc(text)}</pre>\n'
        if kind == "error":
            self.errors += 1
            self.site.report["error_outputs"].append(f"{self.slug}: {jd.get('ename')}: {jd.get('evalue')}")
            trace = ANSI.sub("", "\n".join(jd.get("traceback") or [f"{jd.get('ename')}: {jd.get('evalue')}"]))
            return f'<pre class="output error">{esc(trace)}</pre>\n'
        if kind in ("display_data", "execute_result", "update_display_data"):
            return self.mime_bundle(jd.get("data") or {}, node)
        return self.children(node)

    def mime_text(self, entry) -> str:
        if "content" in entry:
            content = entry["content"]
            return "".join(content) if isinstance(content, list) else str(content)
        if entry.get("path"):
            return self.site.get(entry["path"]).decode("utf-8", "replace")
        return ""

    def mime_bundle(self, data: dict, node) -> str:
        parts = []
        if WIDGET_MIME in data:
            parts.append('<div class="output widget-note">An interactive widget is shown here when the '
                         "notebook runs in Jupyter (JupyterLab, Binder, Colab); this static page shows its "
                         "text form, and the static figures next to it.</div>")
        for mime in IMAGE_MIMES:
            if mime in data:
                entry = data[mime]
                path = entry.get("path") if isinstance(entry, dict) else None
                name = self.site.asset(path) if path else None
                if name:
                    self.figures += 1
                    parts.append(f'<div class="output figure"><img src="{self.root}build/{esc(name)}" '
                                 f'alt="figure output"></div>\n')
                    return "".join(parts)
                warn(f"{self.slug}: an {mime} output has no file")
        if "text/html" in data:
            parts.append(f'<div class="output html">{self.mime_text(data["text/html"])}</div>\n')
        elif node.get("children"):  # text/markdown, parsed by mystmd
            parts.append(f'<div class="output markdown">{self.children(node)}</div>\n')
        elif "text/latex" in data:
            parts.append(f'<pre class="output latex">{esc(self.mime_text(data["text/latex"]))}</pre>\n')
        elif "text/plain" in data:
            text = ANSI.sub("", self.mime_text(data["text/plain"]))
            parts.append(f'<pre class="output text">{esc(text)}</pre>\n')
        return "".join(parts)


def _is_block(node) -> bool:
    return node.get("type") in {"block", "container", "card", "grid", "tabSet", "tabItem", "aside", "div"}


LAYOUT = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · {site_title}</title>
<meta name="generator" content="mystmd {myst_version} (Jupyter Book 2) with the cellpose_nb offline theme">
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{root}_static/book.css">
<link rel="stylesheet" href="{root}_static/pygments.css">
{head_links}<script>window.BOOK_ROOT = {root_json};</script>
<script defer src="{root}_static/book.js"></script>
</head>
<body>
<header class="topbar">
  <a class="site-title" href="{root}index.html">{site_title}</a>
  <div class="search" role="search">
    <input type="search" id="book-search" placeholder="Search the course" aria-label="Search the course"
           autocomplete="off">
    <ol id="book-search-results" class="search-results" hidden></ol>
  </div>
</header>
<div class="layout">
<nav class="sidebar" aria-label="Course pages">
<ol>
{toc}
</ol>
</nav>
<main class="content">
<article class="page" data-slug="{slug}">
<h1 class="page-title">{title}</h1>
{actions}
{body}
</article>
<nav class="pager" aria-label="Previous and next page">{pager}</nav>
<footer class="site-footer">{footer}</footer>
</main>
</div>
</body>
</html>
"""


def toc_item(entry, current: str, root: str, slugs: dict[str, str]) -> str:
    here = entry["slug"] == current
    cls = f'level-{int(entry["level"])}' + (" current" if here else "")
    aria = ' aria-current="page"' if here else ""
    return f'<li class="{cls}"><a href="{root}{slugs[entry["slug"]]}"{aria}>{esc(entry["title"])}</a></li>'


def page_path(slug: str, index_slug: str) -> str:
    """Where a page goes, relative to the site root."""
    return "index.html" if slug == index_slug else f"{slug}/index.html"


def main() -> int:
    cdn = os.environ.get("CONTENT_CDN")
    out = os.environ.get("BUILD_DIRECTORY")
    if not cdn or not out:
        print("render.py runs under `jupyter book build --html` (CONTENT_CDN and BUILD_DIRECTORY unset)",
              file=sys.stderr)
        return 2
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    site = Site(cdn, out)
    config = site.json("/config.json")
    projects = config.get("projects") or []
    if len(projects) != 1:
        warn(f"{len(projects)} projects in the site; rendering the first only")
    project = projects[0]
    prefix = f"/{project['slug']}" if project.get("slug") else ""
    index_slug = project.get("index", "index")
    entries = [{"slug": index_slug, "title": None, "level": 0}] + [
        {"slug": p["slug"], "title": p.get("title") or p["slug"], "level": p.get("level", 1)}
        for p in project.get("pages") or [] if p.get("slug")]
    pages = {e["slug"]: site.json(f"/content{prefix}/{e['slug']}.json") for e in entries}
    site_title = project.get("title") or config.get("title") or "Book"
    entries[0]["title"] = (pages[index_slug].get("frontmatter") or {}).get("title") or site_title
    slugs = {e["slug"]: page_path(e["slug"], index_slug) for e in entries}
    slugs[""] = "index.html"
    mode = os.environ.get("BOOK_MODE", "")

    for k, entry in enumerate(entries):
        slug = entry["slug"]
        data = pages[slug]
        rel = page_path(slug, index_slug)
        root = "../" * rel.count("/")
        page = Page(site, slugs, slug, root)
        page.site_refs = ((data.get("references") or {}).get("cite") or {}).get("data") or {}
        body = page.node(data.get("mdast") or {"type": "root"})
        frontmatter = data.get("frontmatter") or {}
        actions = []
        for export in frontmatter.get("exports") or []:
            if export.get("format") == "ipynb" and export.get("url"):
                name = site.asset(export["url"])
                if name:
                    label = f"executed, {mode} mode" if mode else "executed"
                    filename = esc(export.get("filename") or name)
                    actions.append(f'<a class="download" href="{root}build/{esc(name)}" download="{filename}">'
                                   f"Download this notebook (.ipynb, {esc(label)})</a>")
        toc = "\n".join(toc_item(e, slug, root, slugs) for e in entries)
        pager, head_links = [], []
        if k > 0:
            prev = entries[k - 1]
            pager.append(f'<a class="pager-prev" rel="prev" href="{root}{slugs[prev["slug"]]}">'
                         '<span class="pager-label">Previous</span>'
                         f'<span class="pager-title">{esc(prev["title"])}</span></a>')
            head_links.append(f'<link rel="prev" href="{root}{slugs[prev["slug"]]}">')
        if k + 1 < len(entries):
            nxt = entries[k + 1]
            pager.append(f'<a class="pager-next" rel="next" href="{root}{slugs[nxt["slug"]]}">'
                         '<span class="pager-label">Next</span>'
                         f'<span class="pager-title">{esc(nxt["title"])}</span></a>')
            head_links.append(f'<link rel="next" href="{root}{slugs[nxt["slug"]]}">')
        footer = ("Built with Jupyter Book 2 (mystmd " + esc(config.get("myst", "")) + ")"
                  + (f"; notebook outputs from {esc(mode)} mode." if mode else "."))
        text = LAYOUT.format(
            title=esc(entry["title"]), site_title=esc(site_title), root=root, root_json=json.dumps(root),
            myst_version=esc(config.get("myst", "")), head_links="".join(f"{h}\n" for h in head_links),
            toc=toc, slug=esc(slug), actions=f'<p class="page-actions">{" ".join(actions)}</p>' if actions else "",
            body=body, pager="".join(pager), footer=footer)
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        site.report["pages"].append({"slug": slug, "path": rel, "title": entry["title"],
                                     "figures": page.figures, "error_outputs": page.errors})
        site.report["figures"] += page.figures

    # static files, the search index (also as a script, so that search works from file://)
    static = out / "_static"
    shutil.copytree(HERE / "static", static, dirs_exist_ok=True)
    css = HtmlFormatter().get_style_defs(".highlight") if highlight is not None else ""
    (static / "pygments.css").write_text(css, encoding="utf-8")
    search = site.get("/myst.search.json")
    (out / "myst.search.json").write_bytes(search)
    records = json.loads(search.decode("utf-8")).get("records", [])
    for r in records:  # page URLs as files under the site root
        path, _, fragment = (r.get("url") or "/").partition("#")
        r["url"] = slugs.get(path.strip("/"), slugs[""]) + (f"#{fragment}" if fragment else "")
    (static / "search-index.js").write_text(
        "window.BOOK_SEARCH_INDEX = " + json.dumps(records, ensure_ascii=False) + ";\n", encoding="utf-8")
    (out / ".nojekyll").write_text("")  # GitHub Pages: serve _static/ as it is

    report = dict(site.report, unknown_nodes=dict(site.report["unknown_nodes"]), search_records=len(records))
    (out.parent / "render-report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    if report["unknown_nodes"]:
        warn(f"node types rendered by the generic fallback: {report['unknown_nodes']}")
    if report["error_outputs"]:
        warn(f"error outputs: {report['error_outputs']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
