"""``python -m hdhkd_monai run|infer ...``: MONAI's ``python -m monai.bundle run ...`` for this project's bundle, quiet,
with paths taken literally and one-line errors.

- ``run``: the arguments are MONAI's (``--config_file``, ``--bundle_root``, any ``--key value``); ``--meta_file`` and
  ``--logging_file`` default to the bundle's own.
- ``infer``: ``run`` on ``inference.json``; a ``--config_file`` given is added after it (e.g. ``paper.json``).
- Path options (:data:`PATH_OPTIONS`, and ``--meta_file``/``--logging_file``) are taken literally: ``--input
  '$x'``, ``2024``, ``[a]`` or ``@eaDir`` name those files. MONAI's own command line parses every value (Python Fire,
  then its config syntax: ``$`` runs Python, ``@`` is a reference, ``%`` a macro), and keeps doing so.
- ``--config_file`` also takes names: a bundle config (``train``, ``evaluate``, ``inference``, ...) or a data-set
  preset (``br35h``, ``chest_ct``, ...), e.g. ``--config_file "['train','br35h']"``; both are installed with the
  package, so the commands work from any folder.
- Warnings that are not the user's business are hidden (:data:`hdhkd_monai.quiet.NOT_YOUR_BUSINESS` lists them).
- Exit status: 0 done; :data:`~hdhkd_monai.handlers.outputs.EXIT_SKIPPED` (3) done, but some inputs were skipped
  (listed with the reason in ``skipped.csv``); 1 failed: one line, ``error: <file>: <what is wrong>``, is the last
  line; ``--debug`` shows the whole chained traceback instead (:func:`hdhkd_monai.errors.run_cli`).

May import every layer of the library (it is the top one); never ``tools``, ``experiments`` or ``bench``.
"""

from __future__ import annotations

import ast
import sys

from hdhkd_monai.errors import run_cli
from hdhkd_monai.quiet import quiet_warnings

#: Config keys that hold paths: taken literally by ``python -m hdhkd_monai``.
PATH_OPTIONS = ("input", "bundle_root", "output_dir", "dataset_dir", "datalist", "model_ckpt", "ckpt_dir",
                "teacher_ckpt", "teacher_data", "last_ckpt")
_FILE_OPTIONS = ("meta_file", "logging_file")  # MONAI's own arguments, read as files


def literal(value: str) -> str:
    """A config value that MONAI's parser turns back into exactly ``value``, whatever it holds: an expression
    decoding its bytes (no ``$``, ``@``, ``%`` or ``#`` of ``value`` is left for the parser to read)."""
    return f"$bytes.fromhex('{value.encode('utf-8', 'surrogateescape').hex()}').decode('utf-8','surrogateescape')"


def literal_paths(argv: list[str]) -> list[str]:
    """``argv`` with the values of the path options protected from Python Fire and MONAI's config syntax."""
    result, i = [], 0
    while i < len(argv):
        arg = argv[i]
        name, _, inline = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if name in PATH_OPTIONS + _FILE_OPTIONS and (inline or i + 1 < len(argv)):
            value = inline if "=" in arg else argv[i + 1]
            result += [f"--{name}", literal(value) if name in PATH_OPTIONS else repr(value)]
            i += 1 if "=" in arg else 2
            continue
        result.append(arg)
        i += 1
    return result


def infer_argv(argv: list[str], inference: str) -> list[str]:
    """``infer``'s arguments as ``run``'s: ``inference.json`` first, then any ``--config_file`` given."""
    extra, rest, i = [], [], 0
    while i < len(argv):
        if argv[i] == "--config_file" and i + 1 < len(argv):
            value = argv[i + 1]
            extra += ast.literal_eval(value) if value.startswith("[") else [value]
            i += 2
            continue
        rest.append(argv[i])
        i += 1
    return ["run", "--config_file", str([inference, *extra]), *rest]


_USAGE = "usage: python -m hdhkd_monai {run,infer} [--config_file FILES] [--key value ...] [--debug]"


def _resolved(argv: list[str]) -> list[str]:
    """``run``'s arguments with named configs resolved (a bundle config such as ``train`` or a data-set preset such
    as ``br35h``, installed with the package) and the bundle's meta and logging files filled in."""
    from hdhkd_monai.launcher import CONFIGS, config_files

    args = argv[1:]
    if "--config_file" in args:
        at = args.index("--config_file") + 1
        value = args[at]
        names = ast.literal_eval(value) if value.startswith("[") else value.split(",")
        args[at] = ",".join(config_files(names))
    for option, default in (("--meta_file", CONFIGS / "metadata.json"), ("--logging_file", CONFIGS / "logging.conf")):
        if option not in args:
            args += [option, str(default)]
    return ["run", *args]


def _run(argv: list[str]) -> None:
    if argv[:1] not in (["run"], ["infer"]):
        raise SystemExit(_USAGE)
    import fire
    from monai.bundle import scripts

    if argv[:1] == ["infer"]:
        argv = infer_argv(argv[1:], "inference")
    try:
        fire.Fire({"run": scripts.run}, command=literal_paths(_resolved(argv)), name="python -m hdhkd_monai")
    finally:
        _close_progress_bars()


def _close_progress_bars() -> None:
    """A run that fails mid-way leaves its progress bar open, without a line end: the error line would follow it."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def main(argv: list[str] | None = None) -> int:
    from hdhkd_monai.handlers.outputs import EXIT_SKIPPED, last_run

    quiet_warnings()
    last_run["skipped"] = 0
    status = run_cli(_run, argv)
    return EXIT_SKIPPED if status == 0 and last_run["skipped"] else status


if __name__ == "__main__":
    sys.exit(main())
