"""MkDocs hooks for the vaelab site (mkdocs.yml names this file).

- The experiments' result pages and figures (`experiments/**/*.md`, `*.png`) join the site under `experiments/`,
  so a docs page links to them, and shows their figures, by the same relative paths that work in the repository.
- A link from any page to a file of the repository outside docs/ is rewritten to the site's copy of that file; a
  link to a repository file the site does not carry (source code, scripts) becomes the file's path as code.
  A link to a file that does not exist is left alone, so `mkdocs build --strict` fails on it.
- A notebook's links to other pages (`02-....ipynb`, `../results/....md`, as they work in Jupyter and in the
  repository) point at those pages' HTML in the site.
- `<!-- vaelab-cli-reference -->` on a page becomes the help of `vaelab` and of each of its commands, rendered
  from the parser at build time (never copied by hand).
"""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File

REPO = Path(__file__).resolve().parents[2]
CARRIED = ("experiments",)  # folders of the repository whose pages and figures the site carries
CARRIED_SUFFIXES = (".md", ".png")
CLI_MARKER = "<!-- vaelab-cli-reference -->"
LINK = re.compile(r"(!?\[[^\]\n]*\])\(([^)\s]+)\)")
HREF = re.compile(r'(href|src)="([^"#:?]+)(#[^"]*)?"')
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)


def on_files(files, config):
    for folder in CARRIED:
        for path in sorted((REPO / folder).rglob("*")):
            if path.suffix in CARRIED_SUFFIXES and path.is_file():
                files.append(File.generated(config, path.relative_to(REPO).as_posix(), abs_src_path=str(path)))
    return files


def _repo_path(page) -> str:
    """The page's path in the repository: docs/<src_uri>, or the carried file's own path."""
    top = page.file.src_uri.split("/", 1)[0]
    return page.file.src_uri if top in CARRIED else "docs/" + page.file.src_uri


def _rewrite(match, page, files) -> str:
    text, url = match.group(1), match.group(2)
    if re.match(r"^[a-z][a-z0-9+.-]*:|^#|^/", url):
        return match.group(0)
    path, _, anchor = url.partition("#")
    target = posixpath.normpath(posixpath.join(posixpath.dirname(_repo_path(page)), path))
    if target.startswith("docs/"):
        site_uri = target[len("docs/"):]
    elif target.split("/", 1)[0] in CARRIED and files.get_file_from_path(target) is not None:
        site_uri = target
    elif (REPO / target).exists() and not target.startswith(".."):
        image = text.startswith("!")
        label = text[2:-1] if image else text[1:-1]
        if image or label.strip("`").rstrip("/") == target:
            return label
        return f"{label} (`{target}`)"
    else:
        return match.group(0)  # missing: mkdocs reports it
    new = posixpath.relpath(site_uri, posixpath.dirname(page.file.src_uri) or ".")
    return f"{text}({new}{'#' + anchor if anchor else ''})"


def _cli_reference() -> str:
    from vaelab.cli import build_parser

    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        parser = build_parser()
        sections = ["## `vaelab`\n\n```text\n" + parser.format_help().rstrip() + "\n```\n"]
        commands = next(a for a in parser._actions if a.dest == "command").choices
        for name, sub in commands.items():
            sections.append(f"## `vaelab {name}`\n\n```text\n" + sub.format_help().rstrip() + "\n```\n")
    finally:
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns
    return "\n".join(sections)


def on_page_markdown(markdown, page, config, files):
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, _cli_reference())
    # Rewrite links outside fenced code blocks only.
    pieces, last = [], 0
    for fence in FENCE.finditer(markdown):
        pieces.append(LINK.sub(lambda m: _rewrite(m, page, files), markdown[last:fence.start()]))
        pieces.append(fence.group(0))
        last = fence.end()
    pieces.append(LINK.sub(lambda m: _rewrite(m, page, files), markdown[last:]))
    return "".join(pieces)


def on_page_content(html, page, config, files):
    if not page.file.src_uri.endswith(".ipynb"):
        return html  # mkdocs itself rewrites the links of Markdown pages

    def to_page(match):
        attribute, url, anchor = match.group(1), match.group(2), match.group(3) or ""
        target = files.get_file_from_path(posixpath.normpath(posixpath.join(posixpath.dirname(page.file.src_uri), url)))
        if target is None or not target.is_documentation_page():
            return match.group(0)
        return f'{attribute}="{target.url_relative_to(page.file)}{anchor}"'

    return HREF.sub(to_page, html)
