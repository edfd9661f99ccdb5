"""Imports only point down the layers of docs/design.md; a lower layer importing a higher one fails here.

    errors / jsonio <- ops <- layers / losses <- backbones / necks / heads <- models <- data / metrics / config / convert / build
    <- training / eval / inference <- export <- serving <- api <- cli / main_job

Modules of one layer may import each other. Every `import kdet...` / `from kdet... import` line counts, also the
ones inside functions (a lazy import is still a dependency).
"""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kdet"

LAYERS = [
    ("errors", "jsonio"),
    ("ops",),
    ("layers", "losses"),
    ("backbones", "necks", "heads"),
    ("models",),
    ("data", "metrics", "config", "convert", "build"),
    ("training", "eval", "inference"),
    ("export",),
    ("serving",),
    ("api",),
    ("cli", "main_job"),
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _top(module):
    """'kdet.ops.box_ops' -> 'ops'; 'kdet' -> None (the package itself re-exports everything)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "kdet" else None


def _imports(path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "kdet":  # from kdet import api -> kdet.api
                for alias in node.names:
                    yield node.lineno, f"kdet.{alias.name}"
            else:
                yield node.lineno, node.module


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        module = ".".join(relative.parts)
        if module in ("kdet.__init__", "kdet.__main__"):
            continue
        yield path, module.removesuffix(".__init__")


def test_every_package_has_a_layer():
    tops = {_top(module) for _, module in _modules()}
    assert tops - set(RANK) == set(), "add the new package to LAYERS (and to docs/design.md)"


def test_imports_point_down():
    upward = []
    for path, module in _modules():
        own = RANK[_top(module)]
        for line, imported in _imports(path):
            top = _top(imported)
            if top is None or top not in RANK:
                continue
            if RANK[top] > own:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({LAYERS[own][0]} layer) imports {imported}")
    assert upward == [], "lower layers import higher ones:\n" + "\n".join(upward)


@pytest.mark.parametrize("path", [p for p, _ in _modules()], ids=lambda p: str(p.relative_to(PACKAGE)))
def test_files_stay_readable(path):
    assert len(path.read_text().splitlines()) < 450, "split the file: one sitting is < 450 lines"
