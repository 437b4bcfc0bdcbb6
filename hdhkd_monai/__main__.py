"""``python -m hdhkd_monai run ...``: MONAI's ``python -m monai.bundle run ...`` for this project's bundle, quiet and
with one-line errors; ``python -m hdhkd_monai infer ...`` is ``run`` with the bundle's ``inference.json``.

- The arguments are MONAI's (``--config_file``, ``--bundle_root``, any ``--key value``); ``--meta_file`` and
  ``--logging_file`` default to the bundle's own.
- ``--config_file`` also takes names: a bundle config (``train``, ``evaluate``, ``inference``, ...) or a data-set
  preset (``br35h``, ``chest_ct``, ...), e.g. ``--config_file "['train','br35h']"``; both are installed with the
  package, so the commands work from any folder.
- Warnings that are not the user's business are hidden (:data:`hdhkd_monai.quiet.NOT_YOUR_BUSINESS` lists them).
- A failure prints one line, ``error: <file>: <what is wrong>``, and exits with status 1; ``--debug`` shows the
  whole chained traceback instead (:func:`hdhkd_monai.errors.run_cli`).
"""

from __future__ import annotations

import ast
import sys

from hdhkd_monai.errors import run_cli
from hdhkd_monai.quiet import quiet_warnings

_USAGE = "usage: python -m hdhkd_monai {run,infer} [--config_file FILES] [--key value ...] [--debug]"


def _with_defaults(argv: list[str]) -> list[str]:
    """``argv`` after the command with ``infer``'s config, named configs resolved and the bundle's meta and logging
    files filled in, as ``monai.bundle run`` arguments."""
    from hdhkd_monai.launcher import CONFIGS, config_files

    command, args = argv[0], argv[1:]
    if command == "infer" and "--config_file" not in args:
        args += ["--config_file", "inference"]
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

    fire.Fire({"run": scripts.run}, command=_with_defaults(argv), name="python -m hdhkd_monai")


def main(argv: list[str] | None = None) -> int:
    quiet_warnings()
    return run_cli(_run, argv)


if __name__ == "__main__":
    sys.exit(main())
