"""The optional anomalib rows of ``experiments/run.py main``: ``--baselines ... anomalib-PatchCore anomalib-Padim``.

anomalib lives in an environment of its own (``experiments/anomalib_env.sh``, made on first use, cached under
``~/.cache/hdhkd-monai``; ``HDHKD_ANOMALIB_PYTHON`` names another python that has anomalib). The rows are trained and
evaluated there by ``experiments/anomalib_peer.py`` on the runner's datalist, loaders and image size, and land in
``OUT/baselines/<name>`` with the same layout as the project's baselines.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
ANOMALIB_ROWS = ("anomalib-PatchCore", "anomalib-Padim")


def anomalib_python() -> str:
    """The python of the anomalib environment: ``HDHKD_ANOMALIB_PYTHON``, else the one anomalib_env.sh makes or reuses."""
    if os.environ.get("HDHKD_ANOMALIB_PYTHON"):
        return os.environ["HDHKD_ANOMALIB_PYTHON"]
    made = subprocess.run([str(HERE / "anomalib_env.sh")], check=True, capture_output=True, text=True)
    return made.stdout.strip().splitlines()[-1]


def run_anomalib_rows(args, out: Path, datalist: Path, preset: Path) -> list[dict]:
    """Train and evaluate the anomalib rows named in ``args.baselines`` (none: nothing runs); their table rows."""
    names = [name for name in args.baselines if name in ANOMALIB_ROWS]
    if not names:
        return []
    command = [
        anomalib_python(), str(HERE / "anomalib_peer.py"), "--datalist", str(datalist), "--preset", str(preset),
        "--out", str(out), "--image-size", str(args.image_size), "--batch-size", str(args.batch_size),
        "--iterations", str(args.iterations), "--seed", str(args.seed), "--rows", *names,
        *(["--fresh"] if args.fresh else []),
    ]  # fmt: skip
    subprocess.run(command, check=True, env={**os.environ, "PYTHONPATH": str(HERE.parent)})
    return [json.loads((out / "baselines" / f"{name}.json").read_text()) for name in names]
