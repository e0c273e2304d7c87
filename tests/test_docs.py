"""The documentation the project carries: its reference page exists and is what the code cites."""

from __future__ import annotations

import re

from conftest import REPO


def test_the_reference_page_is_in_the_repository_and_nothing_cites_one_outside_it():
    page = (REPO / "docs" / "reference.md").read_text()
    for number in ("86.76", "101.69", "95.62", "93.38", "81.24", "0.9380"):  # a few of the published numbers it records
        assert number in page
    assert "## Sources" in page and "arXiv:1509.00519" in page
    cited = []
    for path in [*REPO.glob("src/vaelab/**/*.py"), *REPO.glob("src/vaelab/**/*.toml"), *REPO.glob("docs/**/*.md"), REPO / "README.md"]:
        if re.search(r"(?<!docs/)REFERENCE\.md", path.read_text()):
            cited.append(str(path.relative_to(REPO)))
    assert cited == []


def test_help_cites_the_reference_page():
    from vaelab.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    assert "docs/reference.md" in subparsers["train"].description
    assert "docs/reference.md" in subparsers["eval"].format_help()


def _python_blocks(path):
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def _run_blocks(blocks, tmp_path, monkeypatch, data_root):
    """The blocks as one script, in a fresh folder, reading data from data_root (tiny synthetic MNIST)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VAELAB_DATA", str(data_root))
    namespace = {"__name__": "__docs__"}
    exec(compile("\n".join(blocks), "docs", "exec"), namespace)
    return namespace


def test_the_api_page_runs(tiny_data, tmp_path, monkeypatch, capsys):
    blocks = _python_blocks(REPO / "docs" / "api.md")
    assert len(blocks) >= 6
    ns = _run_blocks(blocks, tmp_path, monkeypatch, tiny_data)
    assert ns["summary"]["steps"] == 300 and (tmp_path / "runs" / "api-vae" / "model.safetensors").is_file()
    assert ns["codes"]["z"].shape == (8, 10) and ns["samples"].shape == (16, 784)
    assert ns["result"]["images"] == 200 and "niwae_100_sem" in ns["result"]
    assert (tmp_path / "runs" / "api-compare" / "compare.md").is_file()
    assert "torch.Size([8, 10])" in capsys.readouterr().out


def test_the_readme_python_example_runs(tiny_data, tmp_path, monkeypatch):
    blocks = _python_blocks(REPO / "README.md")
    assert blocks, "the README shows vaelab in Python"
    _run_blocks(blocks, tmp_path, monkeypatch, tiny_data)


def test_model_input_takes_images_as_datasets_give_them():
    import numpy as np
    import pytest
    import torch

    from vaelab import data
    from vaelab.errors import DataError

    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    binary = data.model_input(images)
    assert binary.shape == (5, 784) and set(binary.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(binary, data.model_input(torch.from_numpy(images)))  # the same fixed draw
    assert torch.allclose(data.model_input(images, binary=False), torch.from_numpy(images).float().view(5, -1) / 255)
    assert data.model_input(np.ones((2, 3, 4, 4), dtype=np.float32), binary=False).shape == (2, 48)
    for bad, message in [(images[0, 0], "expected a batch"), (images.astype(np.float32), r"\[0, 1\]"), (images.astype(np.int64), "uint8 or float")]:
        with pytest.raises(DataError, match=message):
            data.model_input(bad)
