"""The tutorial notebooks (docs/tutorials/*.ipynb) run top to bottom in a Jupyter kernel, at tiny budgets: the tests
set the budgets each notebook reads from the environment in its first code cell, and point it at tiny data."""

from __future__ import annotations

import os

import pytest
from conftest import REPO

TUTORIALS = sorted((REPO / "docs" / "tutorials").glob("*.ipynb"))
# The budgets every notebook's first code cell reads; the defaults there are for readers.
TINY = {"VAELAB_TUTORIAL_STEPS": "10", "VAELAB_TUTORIAL_IMAGES": "40", "VAELAB_TUTORIAL_POINTS": "40"}
# dSprites of 128 images (as conftest's tiny_factors), patched into the kernel before the notebook's own cells.
TINY_DSPRITES = """
import numpy as np
from vaelab.data import dsprites
sizes = (2, 2, 2, 4, 4)
dsprites.FACTOR_SIZES = dsprites.Factors.factor_sizes = sizes
dsprites.IMAGES, dsprites.TEST_IMAGES = 128, 28
dsprites.generate = lambda: np.packbits(dsprites.render(dsprites.factors_of(np.arange(128))).reshape(128, -1) > 0, axis=1)
"""


def _tools():
    try:
        import nbclient
        import nbformat
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("nbclient is not installed; the docs extra (pip install -e '.[test]') brings it")
        pytest.skip("nbclient not installed (pip install -e '.[docs]')")
    return nbclient, nbformat


def test_the_tutorials_are_there_and_committed_without_outputs():
    _, nbformat = _tools()
    assert [p.name for p in TUTORIALS] == ["01-train-and-evaluate.ipynb", "02-priors-and-posteriors.ipynb",
                                           "03-your-own-model.ipynb", "04-disentanglement.ipynb"]
    for path in TUTORIALS:
        book = nbformat.read(path, as_version=4)
        nbformat.validate(book)
        code = [cell for cell in book.cells if cell.cell_type == "code"]
        assert all(not cell.outputs and cell.execution_count is None for cell in code), f"{path.name} has outputs"
        assert "VAELAB_TUTORIAL_STEPS" in code[0].source, f"{path.name}: the first code cell sets the budgets"


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_a_tutorial_runs_top_to_bottom(path, tiny_data, tmp_path, monkeypatch):
    nbclient, nbformat = _tools()
    book = nbformat.read(path, as_version=4)
    setup = "import matplotlib\nmatplotlib.use('Agg')\n" + (TINY_DSPRITES if "dsprites" in path.read_text() else "")
    book.cells.insert(0, nbformat.v4.new_code_cell(setup))
    monkeypatch.chdir(tmp_path)
    for name, value in {**TINY, "VAELAB_DATA": str(tiny_data), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg",
                        "TMPDIR": str(tmp_path)}.items():
        monkeypatch.setenv(name, value)
    client = nbclient.NotebookClient(book, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails
    outputs = [out for cell in book.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    printed = "".join(out.get("text", "") for out in outputs if out.output_type == "stream")
    assert "10 steps" in printed or "steps in" in printed or "beta" in printed
