"""The teachers a detector can wrap, by the name its settings record (``teacher.type``), so that inference rebuilds
the teacher a trained model was made with from the checkpoint alone.

May import ``networks.nets`` (the teachers themselves) and the layers below them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from .pdn import PDN
from .pretrained_teacher import PretrainedTeacher

__all__ = ["TEACHERS", "teacher_from_settings", "teacher_settings"]

#: Teacher classes by the name a detector's ``settings["teacher"]["type"]`` records.
TEACHERS: dict[str, type[nn.Module]] = {"PDN": PDN, "PretrainedTeacher": PretrainedTeacher}


def teacher_settings(teacher: nn.Module) -> dict[str, Any]:
    """What a detector records of its ``teacher`` so that :func:`teacher_from_settings` rebuilds it: ``{"type":
    class name, **teacher.settings}``."""
    return {"type": type(teacher).__name__, **getattr(teacher, "settings", {})}


def teacher_from_settings(settings: Mapping[str, Any]) -> nn.Module:
    """The teacher that ``settings`` describe, ``{"type": "PDN", "size": "small", ...}`` (a detector's
    ``settings["teacher"]``, or ``hdhkd_monai.handlers.settings_group(stored, "teacher")`` of a checkpoint), built
    untrained: its weights and feature statistics load with the detector's checkpoint."""
    arguments = dict(settings)
    name = arguments.pop("type", None)
    if name not in TEACHERS:
        raise ValueError(f"teacher type {name!r} is not one of {sorted(TEACHERS)}")
    return TEACHERS[name](**arguments)
