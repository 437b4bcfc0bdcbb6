"""The opt-in ``skip_bad`` policy shared by every loader in ``hdhkd_monai.data``.

A bad file (unreadable, truncated, wrong shape, NaNs, missing DICOM tags, a broken series) raises
:class:`~hdhkd_monai.errors.BadInputError` whose message starts with the offending path. Loaders that take
``skip_bad=True`` catch it through :class:`BadFileLog` instead: each skipped file is logged as a warning and the total is logged once at the end.

May import ``data``, ``distill``, ``pretrained`` and the shared leaves (``errors``, ``state_dict``, ``anomaly_map``,
``metrics``, ``quiet``, ``losses``); nothing of the networks or above.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hdhkd_monai.errors import BadInputError

logger = logging.getLogger("hdhkd_monai.data")


def cli_logging() -> None:
    """Show the data package's log (skipped files and their count) on the console of a command-line tool."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


class BadFileLog:
    """Raise bad-input errors, or (``skip_bad=True``) log and count them.

    Use ``with log.guard(path): ...`` around the work for one file; after the loop ``log.summary(what)`` writes the
    final count line. ``skipped`` lists the paths that were skipped.
    """

    def __init__(self, skip_bad: bool = False):
        self.skip_bad = skip_bad
        self.skipped: list[Path] = []

    def guard(self, path: str | Path) -> "_Guard":
        return _Guard(self, Path(path))

    def summary(self, what: str = "files") -> None:
        if self.skip_bad:
            logger.warning("skipped %d bad %s (skip_bad=True)", len(self.skipped), what)


class _Guard:
    def __init__(self, log: BadFileLog, path: Path):
        self.log, self.path = log, path

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None or not self.log.skip_bad or not isinstance(exc, (BadInputError, OSError)):
            return False
        logger.warning("skipping %s", exc if isinstance(exc, BadInputError) else f"{self.path}: {exc}")
        self.log.skipped.append(self.path)
        return True
