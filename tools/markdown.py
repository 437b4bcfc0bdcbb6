"""Generated sections of the markdown docs: the bench and experiment scripts each own a marked section of a file
and rewrite only that section, so hand-written text around it survives a rerun."""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["replace_section"]


def replace_section(path: str | Path, key: str, body: str) -> None:
    """Write ``body`` between the lines ``<!-- key:begin -->`` and ``<!-- key:end -->`` of the markdown file
    ``path``, replacing what was there. A file without these markers gets the section appended; a missing file is
    created."""
    path = Path(path)
    begin, end = f"<!-- {key}:begin -->", f"<!-- {key}:end -->"
    section = f"{begin}\n{body.strip()}\n{end}"
    text = path.read_text() if path.exists() else ""
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = (text.rstrip() + "\n\n" if text.strip() else "") + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
