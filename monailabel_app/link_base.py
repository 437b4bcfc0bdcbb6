"""Link installed distributions, and every distribution they require, into one folder, for make_env.sh.

    python link_base.py FOLDER torch itk --except numpy

The folder then holds symbolic links to each distribution's top-level files (packages, modules, .dist-info) as
installed in this python's environment, so another environment can reuse them through a ``.pth`` file without
seeing the rest of this one (whose other packages would pin versions the other environment does not have).
"""

import importlib.metadata as metadata
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def closure(names: list[str], excluded: set[str] = frozenset()) -> dict[str, metadata.Distribution]:
    """The installed distributions ``names`` and all they require (markers evaluated, requested extras included),
    but for the ``excluded`` ones, which the other environment installs at its own versions."""
    found, todo = {}, [Requirement(name) for name in names]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in excluded:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional requirement that is not installed
        if name in found and not requirement.extras:
            continue
        found[name] = dist
        for text in dist.requires or []:
            needed = Requirement(text)
            extras = requirement.extras or {""}
            if needed.marker is None or any(needed.marker.evaluate({"extra": extra}) for extra in extras):
                todo.append(needed)
    return found


def link(folder: Path, dists: dict[str, metadata.Distribution]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for dist in dists.values():
        base = Path(dist.locate_file(""))
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in sorted(tops):
            if (base / top).exists() and not (folder / top).exists() and top != "__pycache__":
                (folder / top).symlink_to(base / top)


if __name__ == "__main__":
    folder, *names = sys.argv[1:]
    excluded = set(names[names.index("--except") + 1 :]) if "--except" in names else set()
    link(Path(folder), closure(names[: names.index("--except")] if excluded else names, excluded))
