"""`vaelab reproduce cs236` on a micro schedule: every experiment runs, the report holds the
measured metrics beside the reference numbers, and finished runs are reused."""

from __future__ import annotations

import json

import pytest

from vaelab.cli import main
from vaelab.report.reproduce import CS236


@pytest.fixture(scope="module")
def report_dir(real_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce")
    args = ["reproduce", "cs236", "--steps", "3", "--runs", "2", "--only", "vae,ssvae,cvae", "--out", str(out),
            "--data-dir", str(real_data), "--device", "cpu", "--no-progress", "--threads", "1"]
    assert main(args) == 0
    return out


def test_threads_reach_every_training(report_dir):
    for run in (report_dir / "runs").iterdir():
        assert json.loads((run / "summary.json").read_text())["threads"] == 1


def test_no_progress_still_says_where_it_is(report_dir, tmp_path, capsys):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(report_dir, out)  # its finished runs are reused; report_dir's own report stays whole
    main(["reproduce", "cs236", "--steps", "3", "--only", "vae", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "reproduce: vae seed 0 (1/1)..." and err[1].startswith("reproduce: vae seed 0 done in")


def test_report_lists_every_experiment_with_reference_numbers(report_dir):
    md = (report_dir / "report.md").read_text()
    for title in ("VAE", "SSVAE (M2, gen_weight 1, class_weight 100)", "Conditional VAE on MNIST"):
        assert f"## {title}" in md
    assert "mean ± std of 2 runs" in md
    assert "| NELBO |" in md and "101.51" in md and "96.81" in md  # the write-up's VAE numbers beside ours
    assert "| test accuracy |" in md and "0.9380" in md
    measured = json.loads((report_dir / "runs" / "vae-seed1" / "eval-cs236.json").read_text())
    assert measured["images"] == 100 and "niwae_1000" in measured
    for name in ("vae-samples.png", "vae-curves.png", "cvae-samples.png", "ssvae-reconstructions.png"):
        assert (report_dir / "figures" / name).stat().st_size > 500
    html = (report_dir / "report.html").read_text()
    assert html.count("<table>") == 4 and html.count("<img ") == 9  # summary + one table per experiment
    # The summary table leads: one row per headline metric, the write-ups' numbers beside ours.
    summary = md.split("## Summary", 1)[1].split("\n## ", 1)[0]
    assert "| vae | NELBO |" in summary and "101.51" in summary and "| ssvae | test accuracy |" in summary and "0.9380" in summary


def test_finished_runs_are_reused(report_dir, capsys):
    marker = report_dir / "runs" / "vae-seed0" / "model.safetensors"
    before = marker.stat().st_mtime_ns
    assert main(["reproduce", "cs236", "--steps", "3", "--only", "vae", "--out", str(report_dir), "--no-progress"]) == 0
    assert marker.stat().st_mtime_ns == before
    assert "## VAE" in capsys.readouterr().out


def test_unknown_experiment_is_refused(tmp_path, capsys):
    assert main(["reproduce", "cs236", "--only", "vea", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "--only" in err and "vea" in err


def test_suite_covers_the_assignment():
    assert [e.name for e in CS236] == ["vae", "gmvae", "ssvae_gen0", "ssvae", "cvae"]


CHECK_SCRIPT = r"""
<script>
window.addEventListener('load', () => {
  const images = [...document.images];
  const result = {
    tables: document.querySelectorAll('table').length,
    rows: document.querySelectorAll('tbody tr').length,
    images: images.length,
    rendered: images.filter(img => img.complete && img.naturalWidth > 0).length,
    tableWidth: Math.min(...[...document.querySelectorAll('table')].map(t => t.getBoundingClientRect().width)),
    code: document.querySelectorAll('code').length,
    rawMarkdown: (document.body.innerText.match(/`|\*\*|!\[|\|\s*---|^#+ /gm) || []).length,
  };
  document.body.setAttribute('data-check', JSON.stringify(result));
});
</script>
"""


def _chromium():
    import os
    import shutil

    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs Debian's chromium package")
        pytest.skip("chromium not installed")
    return path


def test_html_report_renders_in_headless_chromium(report_dir, tmp_path):
    import html as html_mod
    import re
    import subprocess

    page = report_dir / "check.html"  # beside report.html, so the relative figure paths resolve
    page.write_text((report_dir / "report.html").read_text().replace("</body>", CHECK_SCRIPT + "</body>"))
    proc = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    match = re.search(r'data-check="([^"]*)"', proc.stdout)
    assert match, proc.stderr[-2000:]
    result = json.loads(html_mod.unescape(match.group(1)))
    report = (report_dir / "report.html").read_text()
    assert result["tables"] == report.count("<table>") >= 1
    assert result["rows"] == report.count("<tr>") - result["tables"]  # header rows are in thead
    assert result["images"] == report.count("<img ") >= 3
    assert result["rendered"] == result["images"], "some figures did not load"
    assert result["tableWidth"] > 100
    assert result["rawMarkdown"] == 0 and result["code"] >= 1  # `preset` rendered as code, no backticks or pipes left as text
