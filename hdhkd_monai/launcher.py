"""Run and read the bundle's workflows the way a user does, for the demo, ``experiments/run.py`` and the tests.

A workflow is one or more configs merged left to right: a bundle config by name (``"train"`` is
``bundle/hdhkd_oct_anomaly/configs/train.json``), a data-set preset by name (``"br35h"`` is ``configs/br35h.json``)
or any JSON file, then ``--key value`` overrides. The bundle and the presets are package data
(``hdhkd_monai/_bundle``, ``hdhkd_monai/_presets``: links to the repository's folders in a clone, copies in a
wheel), so this works from any folder. :func:`run_bundle` runs ``python -m monai.bundle run`` on them in a
subprocess, exactly as typed on a command line; :func:`run_bundles` runs several (a training, then its evaluation)
in one subprocess, or in this process where its console is the output; :func:`read_config` gives the same merged
config in this process.

May import every layer of the library (it is the top one); never ``tools``, ``experiments`` or ``bench``.
"""

from __future__ import annotations

import json
import os
import shlex
import site
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser

from hdhkd_monai.quiet import quiet_env, quiet_warnings

__all__ = [
    "BUNDLE",
    "CONFIGS",
    "OFFLINE_TEACHER",
    "PRESETS",
    "bundle_command",
    "config_files",
    "preprocessing",
    "read_config",
    "run_bundle",
    "run_bundles",
]

_PACKAGE = Path(__file__).resolve().parent
#: The bundle, installed with the package (in a clone, the repository's ``bundle/hdhkd_oct_anomaly``).
BUNDLE = (_PACKAGE / "_bundle" / "hdhkd_oct_anomaly").resolve()
CONFIGS = BUNDLE / "configs"
#: The data-set presets (in a clone, the repository's ``configs/``).
PRESETS = (_PACKAGE / "_presets").resolve()
_LOG_TAIL = 40  # lines of a failed run's output shown in the error
#: The bundle's metadata and logging files, given to every workflow run.
_BUNDLE_FILES = {"meta_file": str(CONFIGS / "metadata.json"), "logging_file": str(CONFIGS / "logging.conf")}


def config_files(workflows: Sequence[str | Path]) -> list[str]:
    """Paths of ``workflows``: a bundle config name (``"train"``), a preset name (``"br35h"``, ``"table5/7_full"``)
    or a path to a JSON file."""
    return [str(_named_config(w)) if isinstance(w, str) and not w.endswith(".json") else str(w) for w in workflows]


def _named_config(name: str) -> Path:
    for folder in (CONFIGS, PRESETS):
        if (folder / f"{name}.json").is_file():
            return folder / f"{name}.json"
    known = sorted(p.stem for p in CONFIGS.glob("*.json")) + sorted(p.stem for p in PRESETS.glob("*.json"))
    raise FileNotFoundError(f"no bundle config or preset named {name!r}; known: {', '.join(known)}, or give a path")


def bundle_command(
    workflows: Sequence[str | Path], interpreter: Sequence[str] = (sys.executable,), **overrides
) -> list[str]:
    """The argv of ``python -m monai.bundle run`` on ``workflows`` with the bundle's metadata and logging files and
    ``--key value`` overrides (values written with ``str``; ``None`` is left out, so the config's value stays).
    ``interpreter`` is what runs ``-m monai.bundle``, e.g. ``(python, "-m", "torch.distributed.run", ...)``."""
    cmd = [*interpreter, "-m", "monai.bundle", "run", "--config_file", str(config_files(workflows))]
    cmd += [part for key, path in _BUNDLE_FILES.items() for part in (f"--{key}", path)]
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
    """Run :func:`bundle_command` with this process's ``hdhkd_monai`` first on the child's Python path.

    The command is printed first, then its output goes to ``log`` (appended) or, without one, to this process's
    console. The warnings of :data:`hdhkd_monai.quiet.NOT_YOUR_BUSINESS` are hidden. A failed run raises ``RuntimeError`` with the end of its output.
    """
    cmd = bundle_command(workflows, interpreter, **overrides)
    if log is None:
        print(f"\n$ {shlex.join(cmd)}\n", flush=True)
    _run_logged(cmd, log, header=f"$ {shlex.join(cmd)}\n")


def _run_logged(cmd: list[str], log: str | Path | None, header: str = "") -> None:
    """Run ``cmd`` with its output appended to ``log`` after ``header`` (without a log, on this process's console); a
    failure raises with the end of the log."""
    if log is None:
        if subprocess.run(cmd, env=_child_env()).returncode:
            raise RuntimeError(f"bundle run failed: {shlex.join(cmd)}")
        return
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write(header)
        f.flush()
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=_child_env())
    if done.returncode:
        tail = "".join(log.read_text().splitlines(keepends=True)[-_LOG_TAIL:])
        raise RuntimeError(f"bundle run failed (exit {done.returncode}); log {log}:\n{tail}")


def run_bundles(
    runs: Sequence[Sequence[str | Path]],
    log: str | Path | None = None,
    each: Sequence[Mapping[str, Any]] = (),
    **overrides,
) -> list[float]:
    """Run the workflows ``runs`` one after the other, each as :func:`run_bundle` would (its command written to
    ``log``, or without one printed, before its output), and return each one's wall seconds. Every run takes
    ``overrides``; ``each[i]``, where given, adds run ``i``'s own (an evaluation's ``n_heatmaps``).

    With a ``log``, in one child interpreter whose output goes there; without one, in this process, whose console
    the output is for (the demo): it has imported torch and MONAI already, which costs 5-7 s of CPU per process
    here, more than a short training. The seconds exclude that import, so a training's time is the training's. The
    first run that fails stops the rest; in a child, it raises ``RuntimeError`` with the end of ``log``."""
    if len(each) > len(runs):
        raise ValueError(f"{len(each)} sets of overrides in each for {len(runs)} runs")
    own = [*each, *[{}] * (len(runs) - len(each))]
    # paths as strings, as a command line gives them (config expressions add strings to them)
    spec = json.loads(json.dumps([{"files": config_files(w), "overrides": {**overrides, **o}} for w, o in zip(runs, own)],
                                 default=str))  # fmt: skip
    if log is None:
        quiet_warnings()
        return _run_each(spec)
    with tempfile.TemporaryDirectory() as tmp:
        times = Path(tmp) / "seconds.json"
        child = "import sys; from hdhkd_monai.launcher import _run_in_turn; _run_in_turn(sys.argv[1], sys.argv[2])"
        _run_logged([sys.executable, "-c", child, json.dumps(spec), str(times)], log)
        return json.loads(times.read_text())


def _run_in_turn(spec_json: str, seconds: str) -> None:
    """The child of :func:`run_bundles`: :func:`_run_each` on the spec; the seconds written to the file ``seconds``."""
    Path(seconds).write_text(json.dumps(_run_each(json.loads(spec_json))))


def _run_each(spec: list[dict]) -> list[float]:
    """``monai.bundle.run`` on each ``{"files", "overrides"}`` of ``spec`` in turn; the seconds of each."""
    from monai.bundle import run

    seconds = []
    for one in spec:
        files, overrides = one["files"], one["overrides"]
        print(f"$ {shlex.join(bundle_command(files, **overrides))}", flush=True)
        start = time.perf_counter()
        run(config_file=files, **_BUNDLE_FILES, **{k: v for k, v in overrides.items() if v is not None})
        seconds.append(time.perf_counter() - start)
    return seconds


def _child_env() -> dict[str, str]:
    """:func:`quiet_env` with the folder holding this ``hdhkd_monai`` first on ``PYTHONPATH``, so the workflow runs
    the same copy of the package as the caller, from whatever folder."""
    env = quiet_env()
    if str(_PACKAGE.parent) not in site.getsitepackages():  # an installed package is found there anyway
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PACKAGE.parent), env.get("PYTHONPATH", "")) if p)
    return env


def read_config(workflows: Sequence[str | Path], **overrides) -> ConfigParser:
    """The merged config of ``workflows`` with the bundle's metadata (``@_meta_``) and ``overrides``, unparsed."""
    parser = ConfigParser()
    parser.read_config(config_files(workflows))
    parser.read_meta(str(CONFIGS / "metadata.json"))
    parser.update(overrides)
    return parser


def preprocessing(presets: Sequence[str | Path] = (), image_size: int | None = None, **overrides):
    """The ``preprocessing`` Compose of ``train.json`` with data-set ``presets`` (``"br35h"``, ``"chest_ct"``, ...)
    and ``overrides`` (``window="mediastinal"``, ``intensity_range=[0, 255]``), as the workflows build it; for
    Python code that loads images as a workflow would. ``image_size`` defaults to the bundle's."""
    sizes = {} if image_size is None else {"image_size": image_size}
    return read_config(["train", *presets], **sizes, **overrides).get_parsed_content("preprocessing")


def _offline_teacher() -> dict[str, str]:
    """The default model's teacher network (``teacher_backbone``/``teacher_weights`` of ``train.json``: the ImageNet
    EfficientNet-Lite0 that pip ships), as the PDN's distillation-target overrides."""
    with open(CONFIGS / "train.json") as f:
        train = json.load(f)
    return {"target_backbone": train["teacher_backbone"], "target_weights": train["teacher_weights"]}


#: Teacher-distillation overrides that need no download, read from ``train.json`` so the teacher network has one
#: home: the experiment runner (EfficientAD-S's PDN), the paper configuration's tests and the baselines use it.
OFFLINE_TEACHER = _offline_teacher()
