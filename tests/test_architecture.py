"""The one import rule of docs/architecture.md: a module of the library imports only its own layer or those below.

Read from the source with ``ast`` (nothing is imported), so a new upward import fails here, naming both modules.
"""

import ast
from pathlib import Path

import pytest

LIBRARY = Path(__file__).resolve().parents[1] / "hdhkd_monai"

#: The layers, lowest first; a module belongs to the longest prefix listed.
LAYERS = [
    ["hdhkd_monai.errors"],
    ["hdhkd_monai.state_dict", "hdhkd_monai.anomaly_map", "hdhkd_monai.metrics", "hdhkd_monai.quiet",
     "hdhkd_monai.losses"],
    ["hdhkd_monai.pretrained"],
    ["hdhkd_monai.distill", "hdhkd_monai.data"],
    ["hdhkd_monai.networks.layers"],
    ["hdhkd_monai.networks.blocks"],
    ["hdhkd_monai.networks.nets", "hdhkd_monai.networks"],
    ["hdhkd_monai.baselines"],
    ["hdhkd_monai.engines", "hdhkd_monai.handlers"],
    ["hdhkd_monai.launcher", "hdhkd_monai.zoo", "hdhkd_monai.demo", "hdhkd_monai.__main__", "hdhkd_monai"],
]  # fmt: skip


def _rank(module: str) -> int:
    matches = [(len(prefix), rank) for rank, layer in enumerate(LAYERS) for prefix in layer
               if module == prefix or module.startswith(prefix + ".")]  # fmt: skip
    return max(matches)[1]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(LIBRARY.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The ``hdhkd_monai`` modules (and ``from hdhkd_monai import x`` as ``hdhkd_monai.x``) ``path`` imports."""
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            names = [f"{target}.{a.name}" for a in node.names] if target == "hdhkd_monai" else [target]
            found |= {n for n in names if n.startswith("hdhkd_monai")}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("hdhkd_monai")}
    return found


SOURCES = sorted(LIBRARY.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(LIBRARY)))
def test_no_module_imports_a_higher_layer(path):
    own = _rank(_module_name(path))
    upward = sorted(m for m in _imports(path) if _rank(m) > own)
    assert not upward, f"{_module_name(path)} (layer {own}) imports a higher layer: {upward}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(LIBRARY)))
def test_the_library_never_imports_repository_tooling(path):
    tree = ast.parse(path.read_text())
    roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    roots |= {n.module.split(".")[0] for n in ast.walk(tree)
              if isinstance(n, ast.ImportFrom) and n.module and not n.level}
    assert not roots & {"tools", "experiments", "bench", "tests"}, path


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(LIBRARY)))
def test_every_module_says_what_it_is_for_and_what_it_may_import(path):
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    assert doc.strip() and "May import" in doc, f"{path}: its opening docstring needs a 'May import ...' line"
