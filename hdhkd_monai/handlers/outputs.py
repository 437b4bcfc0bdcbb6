"""One run, one output set: the inference output folder, claimed by one run at a time.

- **Lock.** A run takes an exclusive ``flock`` on ``output_dir/.lock`` for its lifetime; a second run into the same
  folder stops at once with :class:`OutputBusyError`. The kernel drops the lock when the process ends, however it
  ends, so a killed run leaves no stale lock.
- **An earlier run's outputs** (:data:`OUTPUT_NAMES`) stop a new run with :class:`OutputExistsError`, unless
  ``overwrite`` (they are removed first, so maps and scores never mix runs) or ``resume`` (the rows of
  ``scores.csv`` are kept and their images not scored again; volumes are scored again whole).
- **Rows are kept as they come.** ``scores.csv`` and ``skipped.csv`` are appended and flushed after each batch
  (:class:`RowFile`): an interrupted run keeps every finished row; a torn last line is dropped on resume.
- **Skipped inputs** go to ``skipped.csv`` (``path, reason``); :data:`EXIT_SKIPPED` is the exit status of
  ``python -m hdhkd_monai`` when a run skipped some (:data:`last_run` holds the count).

May import ``engines``, ``handlers``, ``baselines``, ``networks``, ``data`` and the layers below; never the
launcher, ``zoo`` or ``demo``.
"""

from __future__ import annotations

import csv
import fcntl
import io
import logging
import os
import shutil
from pathlib import Path

from hdhkd_monai.data.containment import confined, lexical
from hdhkd_monai.errors import BadInputError, OutputBusyError, OutputExistsError
from hdhkd_monai.handlers.scores import ScoreWriter

__all__ = ["EXIT_SKIPPED", "OUTPUT_NAMES", "OutputBusyError", "OutputExistsError", "OutputSet", "RowFile", "last_run"]

logger = logging.getLogger(__name__)
#: What an inference run writes in its output folder; ``overwrite`` removes exactly these.
OUTPUT_NAMES = ("scores.csv", "skipped.csv", "volumes.csv", "maps", "overlays", "slices", "downscaled")
#: Exit status of ``python -m hdhkd_monai run|infer`` when the run finished but skipped some inputs.
EXIT_SKIPPED = 3
#: The latest run in this process: ``{"skipped": n}`` (read by the command line for its exit status).
last_run: dict = {"skipped": 0}




class RowFile:
    """A CSV written row by row: each ``append`` writes whole lines in one call and flushes them to the OS."""

    def __init__(self, path: str | Path, columns: tuple[str, ...], keep: bool = False) -> None:
        self.path, self.columns = Path(path), columns
        self.rows = self._complete_rows() if keep else []
        self._file = None

    def _complete_rows(self) -> list[dict]:
        """Rows of an existing file, without a last line cut short by a kill (it has no line end)."""
        if not self.path.is_file():
            return []
        with open(self.path, newline="") as f:
            text = f.read()
        text = text[: text.rfind("\n") + 1]
        return list(csv.DictReader(io.StringIO(text, newline="")))

    def append(self, rows: list[dict]) -> None:
        if self._file is None:  # (re)written from the rows kept: a torn line goes
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "w", newline="")
            self._write([dict(zip(self.columns, self.columns)), *self.rows])
        self._write(rows)
        self.rows += rows

    def _write(self, rows: list[dict]) -> None:
        buffer = io.StringIO(newline="")
        csv.DictWriter(buffer, fieldnames=self.columns, extrasaction="ignore").writerows(rows)
        self._file.write(buffer.getvalue())
        self._file.flush()

    def close(self) -> None:
        if self._file is None and not self.path.exists():
            self.append([])  # the header, so an empty table still says what it would hold
        if self._file is not None:
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None


class OutputSet:
    """The output folder of one inference run: locked, cleared or resumed (see the module docstring).

    Args:
        output_dir: the folder; created when absent.
        overwrite: remove an earlier run's outputs first.
        resume: keep them and score only the inputs without a row in ``scores.csv``.
    """

    def __init__(self, output_dir: str | Path, overwrite: bool = False, resume: bool = False) -> None:
        self.path = Path(lexical(output_dir))
        if overwrite and resume:
            raise BadInputError(self.path, "overwrite and resume both set; choose one")
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = _lock(self.path / ".lock")
        found = [name for name in OUTPUT_NAMES if (self.path / name).exists()]
        if found and overwrite:
            self._clear(found)
        elif found and not resume:
            self._lock.close()
            raise OutputExistsError(self.path, f"holds an earlier run's outputs ({', '.join(found)}); set overwrite "
                                               "to true to replace them, resume to true to finish that run, or "
                                               "choose another output_dir")
        self.skipped = RowFile(self.path / "skipped.csv", ("path", "reason"))  # inputs are screened again
        self.scores = RowFile(self.path / "scores.csv", ScoreWriter.columns, keep=resume)
        self.scores.rows = [row for row in self.scores.rows if not row["slice"]]  # volumes are scored again whole
        last_run["skipped"] = 0
        if resume:
            logger.warning("%s: resuming: %d images already scored", self.path, len(self.scores.rows))

    def _clear(self, found: list[str]) -> None:
        for name in found:
            target = self.path / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink()
        logger.warning("%s: removed the outputs of an earlier run (%s): overwrite is set", self.path, ", ".join(found))

    def folder(self, name: str) -> str:
        """``output_dir/name``, checked to stay inside the output folder."""
        return str(confined(self.path / name, self.path))

    def pending(self, items: list[dict]) -> list[dict]:
        """``items`` without the 2-D images that already have a row in ``scores.csv`` (a resumed run)."""
        done = {row["path"] for row in self.scores.rows}
        return [it for it in items if int(it.get("slice", -1)) >= 0 or it["source"] not in done]

    def skip(self, path: str | Path, reason: str) -> None:
        """Record an input that is not scored, with why; logged as a warning."""
        logger.warning("skipping %s: %s", path, reason)
        self.skipped.append([{"path": str(path), "reason": " ".join(reason.split())}])

    def close(self) -> None:
        self.scores.close()
        self.skipped.close()
        last_run["skipped"] = len(self.skipped.rows)
        self._lock.close()  # the next run may start now


def _lock(path: Path):
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise OutputBusyError(path.parent, "another run is writing to this folder; wait for it to finish or "
                                           "choose another output_dir") from None
    return handle
