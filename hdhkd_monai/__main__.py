"""``python -m hdhkd_monai run ...``: MONAI's ``python -m monai.bundle run ...`` for this project's bundle, quiet and
with one-line errors.

- The arguments are MONAI's (``--config_file``, ``--bundle_root``, any ``--key value``); ``--meta_file`` and
  ``--logging_file`` default to the bundle's own.
- Warnings that are not the user's business are hidden (:data:`hdhkd_monai.quiet.NOT_YOUR_BUSINESS` lists them).
- A failure prints one line, ``error: <file>: <what is wrong>``, and exits with status 1; ``--debug`` shows the
  whole chained traceback instead (:func:`hdhkd_monai.errors.run_cli`).
"""

from __future__ import annotations

import sys

from hdhkd_monai.errors import run_cli
from hdhkd_monai.quiet import quiet_warnings


def _run(argv: list[str]) -> None:
    import fire
    from monai.bundle import scripts

    from hdhkd_monai.launcher import CONFIGS

    for option, default in (("--meta_file", CONFIGS / "metadata.json"), ("--logging_file", CONFIGS / "logging.conf")):
        if argv[:1] == ["run"] and option not in argv:
            argv += [option, str(default)]
    fire.Fire({"run": scripts.run}, command=argv, name="python -m hdhkd_monai")


def main(argv: list[str] | None = None) -> int:
    quiet_warnings()
    return run_cli(_run, argv)


if __name__ == "__main__":
    sys.exit(main())
