"""The project's error types, and the one way a known failure becomes a one-line message at an entry point.

Every foreseeable failure raises one of these types with a message that names the file and what to do about it;
``python -m hdhkd_monai`` and the data command-line tools print it as ``error: <message>`` through :func:`run_cli`.

May import the standard library only: every other module imports this one.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "BadInputError",
    "CheckpointMismatchError",
    "ContainmentError",
    "ImageTooLargeError",
    "ImageTooSmallError",
    "OutputBusyError",
    "OutputExistsError",
    "SettingsMismatchError",
    "NAMED_ERRORS",
    "one_line_error",
    "print_fault_last",
    "run_cli",
]


class BadInputError(ValueError):
    """A data file or folder that cannot be used; ``path`` names it and the message says what is wrong."""

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class ContainmentError(BadInputError):
    """A read or write that would leave the declared inputs or the output folder."""


class ImageTooSmallError(BadInputError):
    """An image with a side below the minimum the network takes (``min_image_side``)."""


class ImageTooLargeError(BadInputError):
    """An image with more pixels than ``max_image_pixels``."""


class OutputBusyError(BadInputError):
    """Another run holds the output folder."""


class OutputExistsError(BadInputError):
    """The output folder holds an earlier run's outputs and neither overwrite nor resume was asked for."""


class CheckpointMismatchError(ValueError):
    """A weights file that is unreadable or does not fit the module it is loaded into; the message names the file."""


class SettingsMismatchError(CheckpointMismatchError):
    """A checkpoint made with other settings than the configured ones (image size, teacher, score top-k, ...)."""


#: Errors that already name the file and the fault: the one line shows the first of them in the chain.
NAMED_ERRORS = (BadInputError, CheckpointMismatchError, FileNotFoundError)


def one_line_error(error: BaseException) -> str:
    """The message worth showing of a chain of exceptions (MONAI wraps a config's errors in several layers): the
    outermost one that names a file and its fault, else the innermost one."""
    chain = [error]
    while (cause := chain[-1].__cause__ or chain[-1].__context__) is not None and cause not in chain:
        chain.append(cause)
    named = next((e for e in chain if isinstance(e, NAMED_ERRORS)), chain[-1])
    message = " ".join(str(named).split())  # one line, whatever the message's own line breaks
    return message if isinstance(named, NAMED_ERRORS) else f"{type(named).__name__}: {message}"


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> int:
    """Run a command-line ``main(argv)``: any failure prints as one last line, ``error: <message>``, and gives exit
    status 1; with ``--debug`` among the arguments the whole traceback is shown instead."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        main([a for a in argv if a != "--debug"])
    except Exception as error:  # noqa: BLE001 - the entry point's one place that turns failures into a line
        if debug:
            raise
        print(f"error: {one_line_error(error)} (--debug shows the traceback)", file=sys.stderr)
        return 1
    return 0


def print_fault_last() -> None:
    """Make a failure of ``python -m monai.bundle run`` end with :func:`one_line_error` as the last line of output,
    after the traceback Python prints (MONAI's entry point, not :func:`run_cli`: the bundle's configs call this in
    ``initialize``, so their own command line gets the line too). Calling it again changes nothing."""
    if getattr(sys.excepthook, "prints_fault_last", False):
        return
    previous = sys.excepthook

    def hook(kind, error, traceback) -> None:
        previous(kind, error, traceback)
        sys.stdout.flush()  # anything still buffered would otherwise come after the line
        print(f"error: {one_line_error(error)}", file=sys.stderr, flush=True)

    hook.prints_fault_last = True
    sys.excepthook = hook
