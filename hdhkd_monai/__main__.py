"""``python -m hdhkd_monai run ...``: MONAI's ``python -m monai.bundle run ...`` for this project's bundle, quiet and
with one-line errors.

- The arguments are MONAI's (``--config_file``, ``--bundle_root``, any ``--key value``); ``--meta_file`` and
  ``--logging_file`` default to the bundle's own.
- Warnings that are not the user's business are hidden (:data:`hdhkd_monai.quiet.NOT_YOUR_BUSINESS` lists them).
- A failure prints one line, ``error: <file>: <what is wrong>``, and exits with status 1; ``--debug`` shows the
  whole chained traceback instead.
"""

from __future__ import annotations

import sys

from hdhkd_monai.quiet import one_line_error, quiet_warnings


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    quiet_warnings()
    import fire
    from monai.bundle import scripts

    from hdhkd_monai.launcher import CONFIGS

    for option, default in (("--meta_file", CONFIGS / "metadata.json"), ("--logging_file", CONFIGS / "logging.conf")):
        if argv[:1] == ["run"] and option not in argv:
            argv += [option, str(default)]
    try:
        fire.Fire({"run": scripts.run}, command=argv, name="python -m hdhkd_monai")
    except Exception as error:  # every failure of a workflow: shown as one line unless --debug
        if debug:
            raise
        print(f"error: {one_line_error(error)} (--debug shows the traceback)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
