"""The runner's rows kept on disk (``row.json`` of an HDHKD row, ``OUT/baselines/<name>.json`` of a baseline), read
back instead of run again when they were made under the settings asked for now."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path


def read_back(record: Path, name: str, made_as_asked: Callable[[dict], bool], fresh: bool = False) -> dict | None:
    """The JSON kept in ``record`` for row ``name`` if it exists, ``made_as_asked`` of it holds and ``fresh`` (retrain)
    was not asked; else None. A row read back is announced."""
    if fresh or not record.exists():
        return None
    kept = json.loads(record.read_text())
    if not made_as_asked(kept):
        return None
    print(f"{name}: evaluated before under these settings, read from {record}", flush=True)
    return kept
