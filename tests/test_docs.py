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
