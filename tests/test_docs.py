"""The documentation the project carries: its reference page exists and is what the code cites."""

from __future__ import annotations

import re
import shlex

import pytest
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


# Pages whose every shell and Python block a test runs (at small steps): the front page and the site's first pages.
FRONT_PAGES = ["README.md", "docs/index.md", "docs/getting-started.md"]
SMALL_STEPS = ["--steps", "20", "--batch-size", "20"]
_CI = (REPO / ".ci" / "run").read_text()


def _small(block: str) -> str:
    """A page's Python block at a few training steps: `cfg.train.steps = N` becomes 20."""
    return re.sub(r"(cfg\.train\.steps = )\d+", r"\g<1>20", block)


@pytest.mark.parametrize("page", FRONT_PAGES)
def test_a_front_page_python_example_runs_and_runs_again(page, tiny_data, tmp_path, monkeypatch):
    blocks = [_small(block) for block in _python_blocks(REPO / page)]
    if page != "docs/index.md":
        assert blocks, f"{page} shows vaelab in Python"
    for attempt in ("first", "second"):  # a second run in the same folder works too: each makes a fresh run directory
        _run_blocks(blocks, tmp_path, monkeypatch, tiny_data)


def _shell_commands(path):
    """The commands of a page's ```bash blocks: one per line, split at &&, comments and line continuations removed."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            commands += [part.strip() for part in line.split("&&") if part.strip() and not line.startswith("#")]
    return commands


def _quiet_left_out(words: list[str]) -> str:
    return " ".join(word for word in words if word != "-q")


def _ci_commands() -> set[str]:
    """The commands .ci/run runs, `-q` left out."""
    commands = set()
    for line in _CI.splitlines():
        for part in line.split("&&") if line.strip() and not line.lstrip().startswith("#") else []:
            try:
                commands.add(_quiet_left_out(shlex.split(part)))
            except ValueError:  # a piece of shell syntax, not a command of its own
                pass
    return commands


def test_every_shell_command_of_the_front_pages_runs(tiny_data, tmp_path, monkeypatch, cli):
    """Set-up commands and the test command are the very commands .ci/run runs (CI runs them); every vaelab command
    runs here, in one fresh folder on tiny data, `vaelab train` at a few steps (a command the pages share runs once)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VAELAB_DATA", str(tiny_data))
    ran = []
    for page in FRONT_PAGES:
        commands = _shell_commands(REPO / page)
        assert commands, f"{page} has shell blocks"
        for command in commands:
            words = shlex.split(command)
            if words[0] in ("python3", ".", "pip") or words[:3] == ["python", "-m", "pytest"]:
                assert _quiet_left_out(words) in _ci_commands(), f"{page}: {command!r} is not a command .ci/run runs"
                continue
            assert words[0] == "vaelab", f"{page}: a shell command no test runs: {command!r}"
            if words in ran:
                continue
            args = words[1:] + (SMALL_STEPS + ["--device", "cpu", "--no-progress"] if words[1] == "train" else [])
            result = cli(*args)
            assert result.returncode == 0, f"{page}: {command}: {result.stderr}"
            ran.append(words)
    assert [words[1] for words in ran][:3] == ["train", "eval", "sample"]
    assert (tmp_path / "runs" / "vae" / "samples.png").is_file()


def _documented_commands():
    """Every `vaelab ...` command the docs show: lines of their shell blocks and the README's model table."""
    commands = []
    for path in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]:
        for command in _shell_commands(path):
            words = shlex.split(command)
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # VAR=value before the command
                words = words[1:]
            if words[:1] == ["torchrun"]:
                words = ["vaelab", *words[words.index("vaelab") + 1:]]
            if words[:1] == ["vaelab"]:
                commands.append((path.relative_to(REPO).as_posix(), words[1:]))
    return commands


def test_every_documented_command_is_one_the_parser_takes():
    from vaelab.cli import build_parser

    commands = _documented_commands()
    assert len(commands) >= 60
    for page, args in commands:
        try:
            build_parser().parse_args(args)
        except SystemExit as exc:
            assert exc.code == 0, f"{page}: vaelab {' '.join(args)}"


def _model_table_commands():
    table = (REPO / "README.md").read_text().split("## Models", 1)[1].split("\n## ", 1)[0]
    return [shlex.split(code)[1:] for code in re.findall(r"`(vaelab train [^`]+)`", table)]


def test_every_command_of_the_readme_model_table_trains(tiny_data, tmp_path, cli):
    """Each model of the table trains for a step on tiny data, with the settings the table names (fsvae needs SVHN:
    its settings are checked before its data is read)."""
    commands = _model_table_commands()
    assert len(commands) >= 15
    for i, args in enumerate(commands):
        small = ["--steps", "1", "--batch-size", "10", "--device", "cpu", "--no-progress", "--no-download", "--data-dir", str(tiny_data),
                 "--out", str(tmp_path / f"run{i}")]
        if args[1] == "ssvae":  # the course's labelled positions need the real training split; tiny data: any 10 a class
            small += ["--set", "data.labelled=random"]
        result = cli(*args, *small)
        if args[1] == "fsvae":
            assert result.returncode == 1 and "svhn" in result.stderr, result.stderr
            continue
        assert result.returncode == 0, f"vaelab {' '.join(args)}: {result.stderr}"
        assert (tmp_path / f"run{i}" / "model.safetensors").is_file()


def test_every_help_ends_with_examples_the_parser_takes():
    from vaelab.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for name, p in [("vaelab", parser), *commands.items()]:
        tail = p.format_help().rstrip().split("\nexamples:\n")
        assert len(tail) == 2, f"{name} --help ends without examples"
        examples = tail[1].splitlines()
        assert 2 <= len(examples) <= 3, name
        for example in examples:
            words = shlex.split(example.split("#")[0])
            assert words[0] == "vaelab" and (name == "vaelab" or words[1] == name), example
            try:
                build_parser().parse_args(words[1:])
            except SystemExit as exc:
                assert exc.code == 0, example


def test_the_readme_is_a_front_page():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for section in ("## Set-up", "## Quickstart", "## Models", "## How vaelab differs", "## Documentation"):
        assert section in readme
    from vaelab.models import MODELS

    table = readme.split("## Models", 1)[1].split("\n## ", 1)[0]
    for name in MODELS:  # every registered model is in the table
        assert f"vaelab train {name}" in table or f"`{name} --from" in table or f"then `{name}" in table, name
    assert "python -m vaelab --help" not in readme or "every command and option" not in readme


HISTORY = re.compile(r"\bissues? #?\d+|\bsessions?\b|\blent\b|\bthis round\b", re.I)


def test_the_docs_speak_of_the_project_alone():
    """No issue numbers, no history of how the project was built, no words about who works on it."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md")), *sorted((REPO / "docs").rglob("*.ipynb")),
             *sorted((REPO / "experiments").rglob("README.md"))]
    found = [f"{p.relative_to(REPO)}: {m.group(0)!r}" for p in pages for m in HISTORY.finditer(p.read_text())]
    assert found == []


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
