"""The documentation site: `mkdocs build --strict` builds it from docs/ without a warning, its CLI and API references
are generated from the code, and in headless Chromium every page renders and every internal link (and anchor)
resolves."""

from __future__ import annotations

import functools
import html
import http.server
import json
import os
import re
import subprocess
import sys
import threading

import pytest
from conftest import REPO
from test_reproduce import _chromium


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site, built once for this module as `mkdocs build --strict` builds it (the docs extra)."""
    if subprocess.run([sys.executable, "-c", "import mkdocs, material, mkdocstrings, mkdocs_jupyter"],
                      capture_output=True).returncode:
        if os.environ.get("CI"):
            pytest.fail("the docs tools are not installed; pip install -e '.[test]' brings them (the docs extra)")
        pytest.skip("mkdocs not installed (pip install -e '.[docs]')")
    out = tmp_path_factory.mktemp("site") / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    return out, proc


def _pages(site_dir):
    return sorted(p.relative_to(site_dir).as_posix() for p in site_dir.rglob("*.html") if p.name not in ("404.html", "_check.html"))


def test_the_site_builds_without_a_warning(site):
    out, proc = site
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "WARNING" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    pages = _pages(out)
    nav = re.findall(r":\s*([\w./-]+\.(?:md|ipynb))\s*$|^\s*-\s*([\w./-]+\.(?:md|ipynb))\s*$",
                     (REPO / "mkdocs.yml").read_text(), flags=re.M)
    for source in [a or b for a, b in nav]:
        page = re.sub(r"\.(md|ipynb)$", ".html", source)
        assert page.replace("README.html", "index.html") in pages, source
    for name in ("getting-started.html", "models/vae.html", "results/index.html", "reference/cli.html",
                 "reference/api/training.html", "tutorials/03-your-own-model.html"):
        assert name in pages


def test_the_cli_reference_is_the_parser(site):
    from vaelab.cli import build_parser

    page = html.unescape((site[0] / "reference" / "cli.html").read_text())
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in commands.items():
        assert f"vaelab {name}" in page
        for action in sub._actions:
            for option in action.option_strings:
                assert option in page, (name, option)
        assert sub.epilog and sub.epilog.splitlines()[1].split("#")[0].strip() in page  # its examples


def test_the_api_reference_is_the_docstrings(site):
    from vaelab import evaluation, training
    from vaelab.models import register_model

    def text(name):  # a page's text, without its markup
        return " ".join(html.unescape(re.sub(r"<[^>]+>", "", (site[0] / "reference" / "api" / f"{name}.html").read_text())).split())

    def first_line(obj):
        return " ".join(obj.__doc__.strip().splitlines()[0].replace("`", "").split())[:60]

    pages = {name: text(name) for name in ("training", "evaluation", "models")}
    assert "load_run" in pages["training"] and first_line(training.load_run) in pages["training"]
    assert "evaluate_images" in pages["evaluation"] and first_line(evaluation.evaluate_images) in pages["evaluation"]
    assert "register_model" in pages["models"] and first_line(register_model) in pages["models"]
    for model in ("VAE", "ConditionalVAE", "SSVAE", "HierarchicalVAE", "VQVAE", "VQVAEPrior"):
        assert f"vaelab.models.{model}" in pages["models"] or f" {model} " in pages["models"], model


CHECK_PAGE = r"""<!doctype html><html><body>
FRAMES
<script>
// Runs when every page (each in its frame, with its images; the pages' own scripts are not needed to read them and do
// not run) has loaded; reads each page's article and checks every
// internal link, with its anchor, by synchronous requests, so the result is set before --dump-dom reads the DOM.
window.addEventListener('load', () => {
  const result = {pages: 0, failures: [], links: 0, anchors: 0};
  const links = new Map();
  for (const frame of document.querySelectorAll('iframe')) {
    const page = frame.getAttribute('src'), doc = frame.contentDocument, url = new URL(page, location.href);
    result.pages += 1;
    const article = doc && doc.querySelector('article.md-content__inner');
    const title = article && article.querySelector('h1');
    if (!title || !title.textContent.trim()) { result.failures.push(page + ': no article with a title'); continue; }
    const prose = article.cloneNode(true);
    prose.querySelectorAll('pre, code, .highlight, script, style, .jp-CodeCell').forEach(e => e.remove());
    const raw = prose.textContent.match(/\]\([^)]*\)|^#{1,6} |\|\s*---|\*\*\w/m);
    if (raw) result.failures.push(page + ': raw Markdown ' + JSON.stringify(raw[0]));
    for (const img of article.querySelectorAll('img'))
      if (!(img.complete && img.naturalWidth > 0)) result.failures.push(page + ': image did not load ' + img.getAttribute('src'));
    if (article.textContent.trim().length < 100) result.failures.push(page + ': nearly empty');
    for (const a of doc.querySelectorAll('a[href]')) {
      const target = new URL(a.getAttribute('href'), url);
      if (target.origin !== location.origin) continue;
      const key = target.origin + target.pathname;
      if (!links.has(key)) links.set(key, []);
      links.get(key).push([decodeURIComponent(target.hash.slice(1)), page]);
    }
  }
  for (const [address, uses] of links) {
    result.links += 1;
    const request = new XMLHttpRequest();
    request.open('GET', address, false);
    request.send();
    if (request.status !== 200) { result.failures.push(address + ' (linked from ' + uses[0][1] + '): ' + request.status); continue; }
    const anchors = uses.filter(([hash]) => hash);
    if (!anchors.length) continue;
    const doc = new DOMParser().parseFromString(request.responseText, 'text/html');
    for (const [hash, from] of anchors) {
      result.anchors += 1;
      if (!doc.getElementById(hash)) result.failures.push(address + '#' + hash + ' (linked from ' + from + '): no such anchor');
    }
  }
  document.body.setAttribute('data-check', JSON.stringify(result));
});
</script></body></html>
"""


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_every_page_renders_and_every_internal_link_resolves_in_headless_chromium(site, tmp_path):
    out, proc = site
    assert proc.returncode == 0, proc.stderr[-3000:]
    chromium = _chromium()
    pages = _pages(out)
    frames = "\n".join(f'<iframe src="{page}" sandbox="allow-same-origin" width="1200" height="900"></iframe>' for page in pages)
    (out / "_check.html").write_text(CHECK_PAGE.replace("FRAMES", frames))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(out)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        proc = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom",
             f"http://127.0.0.1:{server.server_address[1]}/_check.html"],
            capture_output=True, text=True, timeout=240)
    finally:
        server.shutdown()
        thread.join()
    match = re.search(r'data-check="([^"]*)"', proc.stdout)
    assert match, proc.stderr[-3000:]
    result = json.loads(html.unescape(match.group(1)))
    assert result["failures"] == []
    assert result["pages"] == len(pages) >= 50
    assert result["links"] >= len(pages) and result["anchors"] >= 5
