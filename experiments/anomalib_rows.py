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

from experiments.records import read_back

HERE = Path(__file__).resolve().parent
ANOMALIB_ROWS = ("anomalib-PatchCore", "anomalib-Padim")


def anomalib_python() -> str:
    """The python of the anomalib environment: ``HDHKD_ANOMALIB_PYTHON``, else the one anomalib_env.sh makes or reuses."""
    if os.environ.get("HDHKD_ANOMALIB_PYTHON"):
        return os.environ["HDHKD_ANOMALIB_PYTHON"]
    made = subprocess.run([str(HERE / "anomalib_env.sh")], check=True, capture_output=True, text=True)
    return made.stdout.strip().splitlines()[-1]


def row_budget(args, version: str) -> dict:
    """The budget an anomalib row is recorded with (``OUT/baselines/<name>.json``) and read back under."""
    return {"image_size": args.image_size, "iterations": args.iterations, "batch_size": args.batch_size,
            "seed": args.seed, "anomalib": version}  # fmt: skip


def anomalib_version(python: str) -> str:
    """The anomalib version of ``python``'s environment, from its package metadata (nothing heavy is imported)."""
    code = "import importlib.metadata as m; print(m.version('anomalib'))"
    return subprocess.run([python, "-c", code], check=True, capture_output=True, text=True).stdout.strip()


def run_anomalib_rows(args, out: Path, datalist: Path, preset: Path) -> list[dict]:
    """Train and evaluate the anomalib rows named in ``args.baselines`` (none: nothing runs); their table rows. A row
    recorded under the same budget is read back here, without starting the anomalib environment's interpreter."""
    names = [name for name in args.baselines if name in ANOMALIB_ROWS]
    if not names:
        return []
    python = anomalib_python()
    budget = row_budget(args, anomalib_version(python))
    records = {name: out / "baselines" / f"{name}.json" for name in names}
    kept = {n: read_back(records[n], n, lambda kept: kept["budget"] == budget, args.fresh) for n in names}
    to_run = [n for n in names if not kept[n]]
    if to_run:
        command = [
            python, str(HERE / "anomalib_peer.py"), "--datalist", str(datalist), "--preset", str(preset),
            "--out", str(out), "--image-size", str(args.image_size), "--batch-size", str(args.batch_size),
            "--iterations", str(args.iterations), "--seed", str(args.seed), "--rows", *to_run,
            *(["--fresh"] if args.fresh else []),
        ]  # fmt: skip
        subprocess.run(command, check=True, env={**os.environ, "PYTHONPATH": str(HERE.parent)})
    return [json.loads(records[name].read_text()) for name in names]
