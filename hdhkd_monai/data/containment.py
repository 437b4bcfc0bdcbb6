"""Containment: what a run reads and where it writes, whatever a datalist, a file name or a symlink holds.

- Reads: only regular files are read as images (:func:`regular_file`); a listed device, FIFO or socket
  (``/dev/zero``) is refused, so a list cannot make a run hang or read without end.
- Writes: every output name is derived from an input path *lexically* (``..`` folded away, symlinks not
  followed), made relative to the deepest folder holding all inputs (:func:`input_root`), stripped of control
  characters (:func:`output_name`), and finally checked to resolve inside the output folder (:func:`confined`),
  which catches a symlink planted in the output folder.

Characters that matter to shells and to MONAI's config syntax (``$ @ % ; |``) stay in the names: the project never
passes a path through a shell, and paths reach the configs as values, not as config text.

May import ``data``, ``distill``, ``pretrained`` and the shared leaves (``errors``, ``state_dict``, ``anomaly_map``,
``metrics``, ``quiet``, ``losses``); nothing of the networks or above.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from pathlib import Path

from hdhkd_monai.errors import BadInputError, ContainmentError

__all__ = ["ContainmentError", "confined", "input_root", "output_name", "regular_file"]

logger = logging.getLogger("hdhkd_monai.data")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # newline, tab, ...: legal in Linux names, unusable in tables and shells



def lexical(path: str | Path) -> str:
    """``path`` absolute, with ``.``/``..`` folded away without following symlinks (``os.path.normpath``)."""
    return os.path.normpath(os.path.abspath(path))


def input_root(paths: list[str | Path]) -> str:
    """The deepest folder holding every path, lexically: output names are the inputs' paths below it."""
    return os.path.commonpath([os.path.dirname(lexical(p)) for p in paths])


def output_name(path: str | Path, root: str | Path) -> Path:
    """The output base name of input ``path``: its lexical path below ``root`` without suffix (``.nii.gz`` counted as
    one; a DICOM series folder keeps its whole name, dots and all), control characters replaced by ``_``. Raises :class:`ContainmentError` when ``path`` is not below ``root``
    (no name derived from an input may climb out of the output folder)."""
    rel = os.path.relpath(lexical(path), lexical(root))
    if rel == os.curdir or rel.split(os.sep)[0] == os.pardir:
        raise ContainmentError(path, f"is not below the input root {root}; its outputs would leave the output folder")
    rel = Path(rel)
    if Path(path).is_dir():
        stem = rel
    else:
        stem = rel.with_name(rel.name[: -len(".nii.gz")]) if rel.name.endswith(".nii.gz") else rel.with_suffix("")
    clean = Path(*(_CONTROL.sub("_", part) for part in stem.parts))
    if clean != stem:
        logger.warning("%r: control characters in the name, written as %s", str(path), clean)
    return clean


def confined(target: str | Path, folder: str | Path) -> Path:
    """``target`` when it resolves (symlinks followed) inside ``folder``; else :class:`ContainmentError`."""
    target = Path(target)
    if not target.resolve().is_relative_to(Path(folder).resolve()):
        raise ContainmentError(target, f"resolves outside the output folder {folder} (a symlink in it?); remove the "
                                       "link or choose another output folder")
    return target


def regular_file(path: str | Path) -> Path:
    """``path`` when it is a regular file (symlinks followed); else :class:`BadInputError` saying what it is."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError as e:
        raise BadInputError(path, f"cannot be read ({e.strerror})") from e
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a device, FIFO or socket)"
        raise BadInputError(path, f"{kind}: only image files are read")
    return path
