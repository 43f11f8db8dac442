"""The layers of docs/architecture.md hold: every pypds import points to the same layer or below."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "pypds"

#: Layer of each module or package (a package's layer covers its modules), as in docs/architecture.md.
LAYERS = {
    "pypds.errors": 1,
    "pypds.limits": 1,
    "pypds.version": 1,
    "pypds.filesystem": 1,
    "pypds.syntax": 1,
    "pypds.tid": 1,
    "pypds.operation": 1,
    "pypds.codec": 1,
    "pypds.keys": 2,
    "pypds.commit": 2,
    "pypds.mst": 3,
    "pypds.car": 4,
    "pypds.sync": 5,
    "pypds.storage": 6,
    "pypds.repo": 7,
    "pypds.net": 8,
    "pypds.cli": 8,
    "pypds": 9,  # the package root: the public surface, above everything
}


def layer_of(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        layer = LAYERS.get(".".join(parts[:n]))
        if layer is not None:
            return layer
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and docs/architecture.md")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """``(line, absolute module)`` of every pypds import in a file (relative ones resolved)."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                names = [f"{target}.{alias.name}" for alias in node.names] if node.module is None else [target]
            else:
                names = [node.module or ""]
            found.extend((node.lineno, name) for name in names if name.startswith("pypds"))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names if alias.name.startswith("pypds"))
    return found


FILES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_to_the_same_layer_or_below(path):
    own = layer_of(module_name(path))
    upward = [(line, target) for line, target in imports_of(path) if layer_of(target) > own]
    assert not upward, f"{path.relative_to(PACKAGE.parent)} (layer {own}) imports upward: {upward}"


def test_every_module_is_in_the_architecture_page():
    page = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    for path in FILES:
        name = path.stem
        if name in ("__init__", "__main__") or path.parent.name == "cli":
            continue
        assert f"{name}" in page, f"docs/architecture.md does not mention {path.relative_to(PACKAGE)}"
