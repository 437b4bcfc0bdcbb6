"""Quiet defaults of the project's own entry points (``python -m hdhkd_monai``, the launcher the demo, experiments
and tests use): which warnings are hidden, and how a failure is reduced to one line."""

from __future__ import annotations

import os
import warnings

from hdhkd_monai.data.errors import BadInputError
from hdhkd_monai.state_dict import CheckpointMismatchError

__all__ = ["NOT_YOUR_BUSINESS", "one_line_error", "quiet_env", "quiet_warnings"]

#: (start of the message, category, why it is not the user's business). Hidden at the project's entry points only;
#: ``import hdhkd_monai`` changes no warning filter.
NOT_YOUR_BUSINESS = (
    ("parsing config_file", UserWarning,
     "MONAI's notice that bundle configs run code: these are the project's own configs"),
    ("NvImgCodecPydicomReader", UserWarning,
     "MONAI's GPU DICOM decoder is absent; the project reads DICOM with pydicom"),
)  # fmt: skip
#: Errors that already name the file and the fault: the one line shows the first of them in the chain.
_NAMED_ERRORS = (BadInputError, CheckpointMismatchError, FileNotFoundError)


def quiet_warnings() -> None:
    """Hide :data:`NOT_YOUR_BUSINESS` in this process. (The same warning of MONAI's NvImgCodec plugin *logger* is
    hidden by the bundle's ``logging.conf``, which both entry points use.)"""
    for message, category, _ in NOT_YOUR_BUSINESS:
        warnings.filterwarnings("ignore", message=message, category=category)


def quiet_env(env: dict | None = None) -> dict:
    """``env`` (default: this process's) with ``PYTHONWARNINGS`` hiding :data:`NOT_YOUR_BUSINESS`, for a
    ``python -m monai.bundle`` subprocess."""
    env = dict(os.environ if env is None else env)
    filters = [f"ignore:{message}:{category.__name__}" for message, category, _ in NOT_YOUR_BUSINESS]
    env["PYTHONWARNINGS"] = ",".join(filter(None, [env.get("PYTHONWARNINGS"), *filters]))
    return env


def one_line_error(error: BaseException) -> str:
    """The message worth showing of a chain of exceptions (MONAI wraps a config's errors in several layers): the
    outermost one that names a file and its fault, else the innermost one."""
    chain = [error]
    while (cause := chain[-1].__cause__ or chain[-1].__context__) is not None and cause not in chain:
        chain.append(cause)
    named = next((e for e in chain if isinstance(e, _NAMED_ERRORS)), chain[-1])
    message = " ".join(str(named).split())  # one line, whatever the message's own line breaks
    return message if isinstance(named, _NAMED_ERRORS) else f"{type(named).__name__}: {message}"
