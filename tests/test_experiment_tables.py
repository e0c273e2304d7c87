"""The PixelCNN results page shows what its table script computes from the committed evaluation files."""

from __future__ import annotations

import importlib.util
import json
import shutil

from conftest import REPO

CPU = REPO / "experiments" / "pixelvae" / "cpu"


def _load_cpu_table():
    spec = importlib.util.spec_from_file_location("cpu_table", REPO / "experiments" / "pixelvae" / "cpu_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cpu_table = _load_cpu_table()


def test_the_committed_tables_are_what_the_script_computes_from_the_committed_runs():
    assert (CPU / "tables.md").read_text() == cpu_table.tables(CPU, 1000) + "\n"


def test_the_results_page_carries_every_row_of_the_tables():
    page = (REPO / "docs" / "results" / "pixelvae.md").read_text()
    rows = [line for line in cpu_table.tables(CPU, 1000).splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 2 + 4 + 6  # both tables: two headers, four models, six collapse runs
    assert [row for row in rows if row not in page] == []


def test_a_missing_or_partial_run_is_a_not_run_row(tmp_path):
    shutil.copytree(CPU / "conv_vae", tmp_path / "conv_vae")
    (tmp_path / "pixelvae").mkdir()
    shutil.copy(CPU / "conv_vae" / "summary.json", tmp_path / "pixelvae" / "summary.json")  # trained, not evaluated
    nll, collapse = cpu_table.nll_table(tmp_path, 1000), cpu_table.collapse_table(tmp_path, 1000)
    conv, bernoulli, pixelvae, vlae = nll[2:]
    part = json.loads((CPU / "conv_vae" / "eval-full-1000.json").read_text())
    assert f"**{part['niwae_1000']:.2f}** ({part['niwae_1000_sem']:.2f})" in conv
    assert f"{part['niwae_1000'] - part['niwae_100']:+.2f}" in conv
    assert "not run" in bernoulli and "not run" in pixelvae and "not run" in vlae
    assert all("not run" in row for row in collapse[2:])
    assert cpu_table.tables(tmp_path, 1000) == "\n".join(nll)  # no collapse run here: no collapse table
