"""Run and read the bundle's workflows the way a user does, for the demo, ``experiments/run.py`` and the tests.

A workflow is one or more configs merged left to right: a bundle config by name (``"train"`` is
``bundle/hdhkd_oct_anomaly/configs/train.json``) or any JSON file (a data set override from ``configs/``), then
``--key value`` overrides. :func:`run_bundle` runs ``python -m monai.bundle run`` on them in a subprocess, exactly as
typed on a command line; :func:`read_config` gives the same merged config in this process.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from monai.bundle import ConfigParser

from hdhkd_monai.quiet import quiet_env

__all__ = [
    "BUNDLE",
    "CONFIGS",
    "OFFLINE_TEACHER",
    "REPO",
    "bundle_command",
    "config_files",
    "read_config",
    "run_bundle",
]

REPO = Path(__file__).resolve().parents[1]
#: The bundle in this clone (the package is used from a clone: the bundle is not installed with it).
BUNDLE = REPO / "bundle" / "hdhkd_oct_anomaly"
CONFIGS = BUNDLE / "configs"
_LOG_TAIL = 30  # lines of a failed run's output shown in the error


def config_files(workflows: Sequence[str | Path]) -> list[str]:
    """Paths of ``workflows``: a bundle config name (``"train"``) or a path to a JSON file."""
    return [str(CONFIGS / f"{w}.json") if isinstance(w, str) and not w.endswith(".json") else str(w) for w in workflows]


def bundle_command(
    workflows: Sequence[str | Path], interpreter: Sequence[str] = (sys.executable,), **overrides
) -> list[str]:
    """The argv of ``python -m monai.bundle run`` on ``workflows`` with the bundle's metadata and logging files and
    ``--key value`` overrides (values written with ``str``; ``None`` is left out, so the config's value stays).
    ``interpreter`` is what runs ``-m monai.bundle``, e.g. ``(python, "-m", "torch.distributed.run", ...)``."""
    cmd = [*interpreter, "-m", "monai.bundle", "run", "--config_file", str(config_files(workflows))]
    cmd += ["--meta_file", str(CONFIGS / "metadata.json"), "--logging_file", str(CONFIGS / "logging.conf")]
    for key, value in overrides.items():
        if value is not None:
            cmd += [f"--{key}", str(value)]
    return cmd


def run_bundle(
    workflows: Sequence[str | Path],
    log: str | Path | None = None,
    interpreter: Sequence[str] = (sys.executable,),
    **overrides,
) -> None:
    """Run :func:`bundle_command` from the repository root (so that this clone's ``hdhkd_monai`` is the one imported).

    The command is printed first, then its output goes to ``log`` (appended) or, without one, to this process's
    console. The warnings of :data:`hdhkd_monai.quiet.NOT_YOUR_BUSINESS` are hidden. A failed run raises ``RuntimeError`` with the end of its output.
    """
    cmd = bundle_command(workflows, interpreter, **overrides)
    if log is None:
        print(f"\n$ {shlex.join(cmd)}\n", flush=True)
        if subprocess.run(cmd, cwd=REPO, env=quiet_env()).returncode:
            raise RuntimeError(f"bundle run failed: {shlex.join(cmd)}")
        return
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write(f"$ {shlex.join(cmd)}\n")
        f.flush()
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=quiet_env())
    if done.returncode:
        tail = "".join(log.read_text().splitlines(keepends=True)[-_LOG_TAIL:])
        raise RuntimeError(f"bundle run failed (exit {done.returncode}); log {log}:\n{tail}")


def read_config(workflows: Sequence[str | Path], **overrides) -> ConfigParser:
    """The merged config of ``workflows`` with the bundle's metadata (``@_meta_``) and ``overrides``, unparsed."""
    parser = ConfigParser()
    parser.read_config(config_files(workflows))
    parser.read_meta(str(CONFIGS / "metadata.json"))
    parser.update(overrides)
    return parser


def _offline_teacher() -> dict[str, str]:
    """The default model's teacher network (``teacher_backbone``/``teacher_weights`` of ``train.json``: the ImageNet
    EfficientNet-Lite0 that pip ships), as the PDN's distillation-target overrides."""
    with open(CONFIGS / "train.json") as f:
        train = json.load(f)
    return {"target_backbone": train["teacher_backbone"], "target_weights": train["teacher_weights"]}


#: Teacher-distillation overrides that need no download, read from ``train.json`` so the teacher network has one
#: home: the experiment runner (EfficientAD-S's PDN), the paper configuration's tests and the baselines use it.
OFFLINE_TEACHER = _offline_teacher()
