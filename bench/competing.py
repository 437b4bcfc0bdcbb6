"""A bounded competing load for the benchmarks: single-thread busy processes started beside the timed work.

Each process spins in a pure-Python loop (one core's worth of CPU, no memory traffic) and exits by itself after
``max_seconds``, so a benchmark killed mid-run leaves nothing spinning for long.
"""

import contextlib
import subprocess
import sys
from typing import Iterator

SPIN = "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end:\n    pass\n"


@contextlib.contextmanager
def competing_processes(count: int, max_seconds: float = 1800.0) -> Iterator[None]:
    """Runs ``count`` single-thread busy processes while the block runs."""
    procs = [subprocess.Popen([sys.executable, "-c", SPIN, str(max_seconds)]) for _ in range(count)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()
