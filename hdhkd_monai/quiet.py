"""Quiet defaults of the project's own entry points (``python -m hdhkd_monai``, the launcher the demo, experiments
and tests use): which warnings are hidden.

May import ``hdhkd_monai.errors`` only.
"""

from __future__ import annotations

import os
import warnings

__all__ = ["NOT_YOUR_BUSINESS", "quiet_env", "quiet_warnings"]

#: (start of the message, category, why it is not the user's business). Hidden at the project's entry points only;
#: ``import hdhkd_monai`` changes no warning filter.
NOT_YOUR_BUSINESS = (
    ("parsing config_file", UserWarning,
     "MONAI's notice that bundle configs run code: these are the project's own configs"),
    ("NvImgCodecPydicomReader", UserWarning,
     "MONAI's GPU DICOM decoder is absent; the project reads DICOM with pydicom"),
)  # fmt: skip


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
