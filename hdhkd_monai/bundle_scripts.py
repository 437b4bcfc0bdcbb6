"""The library code a bundle's configs run, copied into the bundle's ``scripts/`` folder, as Model Zoo bundles carry
their custom code.

The configs name components by module path (``hdhkd_monai.networks.HDHKD``, ``$import hdhkd_monai.handlers``).
:func:`write_scripts` finds those modules, follows their imports of the library to the last one, and copies exactly
those files from this installed ``hdhkd_monai`` into ``<bundle>/scripts/`` with ``hdhkd_monai`` renamed
``scripts`` (in the code and in the configs). The bundle then runs where hdhkd-monai is not installed: MONAI's
``python -m monai.bundle run`` from the bundle folder and the Zoo's CI (which puts the bundle folder first on
``sys.path``) import ``scripts``. The library stays the one source: nothing is copied by hand.

:func:`third_party_requirements` lists the installed distributions that the copied code imports, with their versions,
for the metadata's ``required_packages_version``.

May import every layer of the library (it is the top one); never ``tools``, ``experiments`` or ``bench``.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import re
import sys
from collections.abc import Iterable
from pathlib import Path

__all__ = ["LIBRARY", "SCRIPTS", "library_modules", "third_party_requirements", "write_scripts"]

LIBRARY = "hdhkd_monai"
#: The package name of the copied code inside a bundle (the Zoo's convention).
SCRIPTS = "scripts"
_PACKAGE_DIR = Path(__file__).resolve().parent
_NAME = re.compile(rf"\b{LIBRARY}\b")
_DOTTED = re.compile(rf"\b{LIBRARY}(?:\.\w+)*")
#: Provided by the Zoo's own requirement lines (monai_version, pytorch_version, numpy_version).
_PINNED_ELSEWHERE = {"monai", "torch", "numpy"}


def _module_file(module: str) -> Path | None:
    """The source file of library module ``module`` (``hdhkd_monai.a.b``), or None when it is not one."""
    parts = module.split(".")[1:]
    base = _PACKAGE_DIR.joinpath(*parts)
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _longest_module(dotted: str) -> str | None:
    """``hdhkd_monai.networks.HDHKD`` -> ``hdhkd_monai.networks`` (the longest prefix that is a module)."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        if _module_file(".".join(parts[:end])):
            return ".".join(parts[:end])
    return None


def _imports(module: str) -> tuple[set[str], set[str]]:
    """(library modules, top-level names of other packages) that ``module``'s source imports, anywhere in it."""
    path = _module_file(module)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    library, others = set(), set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] == LIBRARY:
                found = _longest_module(name)
                library.update({found} if found else set())
            elif name and not getattr(node, "level", 0):
                others.add(name.split(".")[0])
    return library, others


def library_modules(configs: Iterable[Path]) -> tuple[set[str], set[str]]:
    """(every library module the ``configs`` use, directly or through imports, with their parent packages; the
    top-level names of the other packages those modules import)."""
    configs = [path for path in configs if Path(path).name != "metadata.json"]  # its text only mentions the library
    todo = {m for path in configs for m in map(_longest_module, _DOTTED.findall(Path(path).read_text())) if m}
    done, others = set(), set()
    while todo:
        module = todo.pop()
        done.add(module)
        parts = module.split(".")
        parents = {".".join(parts[:end]) for end in range(1, len(parts))}
        library, imported = _imports(module)
        others |= imported
        todo |= (library | parents) - done
    return done, others


def third_party_requirements(imported: Iterable[str]) -> dict[str, str]:
    """``{distribution: installed version}`` for the top-level import names ``imported`` that installed
    distributions provide (standard library, uninstalled optional packages and MONAI/torch/numpy left out)."""
    providers = importlib.metadata.packages_distributions()
    found = {}
    for name in sorted(set(imported) - sys.stdlib_module_names - {LIBRARY}):
        # a namespace that several distributions fill (itk) is required through the one named like it
        distributions = [name] if _installed(name) else providers.get(name, [])
        for distribution in distributions:
            if distribution.lower() not in _PINNED_ELSEWHERE:
                found[distribution] = importlib.metadata.version(distribution)
    return found


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def rename_library(text: str) -> str:
    """``text`` with the library's package name replaced by :data:`SCRIPTS`."""
    return _NAME.sub(SCRIPTS, text)


def write_scripts(bundle_root: Path) -> dict[str, str]:
    """Copy the library modules that ``bundle_root/configs/*.json`` use into ``bundle_root/scripts`` and point the
    configs at them. Returns :func:`third_party_requirements` of the copied code."""
    configs = sorted((bundle_root / "configs").glob("*.json"))
    modules, imported = library_modules(configs)
    for module in sorted(modules):
        source = _module_file(module)
        target = bundle_root / SCRIPTS / source.relative_to(_PACKAGE_DIR)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(rename_library(source.read_text()))
    for config in configs:
        if config.name != "metadata.json":
            config.write_text(rename_library(config.read_text()))
    return third_party_requirements(imported)
