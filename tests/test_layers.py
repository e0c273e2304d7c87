"""The package's layers: imports go downward only, so no cycle can form.

    0  errors, progress                      (nothing of vaelab)
    1  devices, distributions, nets, data    (the bottom: device choice, densities, networks, datasets)
    2  models                                (the model contract and the generative stories)
    3  objectives                            (terms -> bounds and losses)
    4  evaluation                            (bounds, protocols, diagnostics)
    5  training                              (validates with evaluation's bounds)
    6  report                                (figures, compare, reproduce)
    7  cli
    8  __main__
A module may import its own package and any lower layer, never a higher or a sibling one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "vaelab"
LAYERS = {"errors": 0, "progress": 0, "devices": 1, "distributions": 1, "nets": 1, "data": 1, "models": 2, "objectives": 3,
          "evaluation": 4, "training": 5, "report": 6, "cli": 7, "__main__": 8}


def _unit(parts: tuple[str, ...]) -> str:
    """The top-level unit (package or module under vaelab/) a dotted path inside vaelab belongs to."""
    return parts[0].removesuffix(".py")


def _imports(path: Path) -> list[tuple[str, int]]:
    """(imported unit, line) for every import of vaelab code in `path`, including imports inside functions."""
    here = path.relative_to(PACKAGE).parts
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this file's package
                base = list(here[:-1])[: len(here) - node.level]
                target = [*base, *(node.module.split(".") if node.module else [])]
                names = [target] if target else [[alias.name] for alias in node.names]
            elif node.module and node.module.split(".")[0] == "vaelab":
                target = node.module.split(".")[1:]
                names = [target] if target else [[alias.name] for alias in node.names]
            else:
                continue
            found += [(_unit(tuple(t)), node.lineno) for t in names if t]
        elif isinstance(node, ast.Import):
            found += [(alias.name.split(".")[1], node.lineno) for alias in node.names
                      if alias.name.startswith("vaelab.")]
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def test_every_module_has_a_layer():
    units = {_unit(p.relative_to(PACKAGE).parts) for p in MODULES}
    assert units <= set(LAYERS), units - set(LAYERS)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_downward_only(path):
    own = _unit(path.relative_to(PACKAGE).parts)
    for unit, line in _imports(path):
        if unit == own or unit in ("__init__", "__version__"):  # vaelab/__init__.py holds only the version
            continue
        assert unit in LAYERS, f"{path.name}:{line} imports vaelab.{unit}, which has no layer"
        assert LAYERS[unit] < LAYERS[own], (f"{path.relative_to(PACKAGE)}:{line} (layer {LAYERS[own]}) imports "
                                            f"vaelab.{unit} (layer {LAYERS[unit]})")


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    """The test above could pass by reading nothing: check it finds a planted upward import."""
    fake = PACKAGE / "models" / "_planted_for_test.py"
    fake.write_text("from ..training import train\nfrom vaelab.report import figures\n")
    try:
        assert {unit for unit, _ in _imports(fake)} == {"training", "report"}
    finally:
        fake.unlink()
