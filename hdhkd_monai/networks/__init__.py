"""HDHKD networks, laid out as MONAI's: ``layers`` (stateless helpers, the selective scan), ``blocks`` (encoder,
decoders, mixers, SS2D, MFM) and ``nets`` (the teachers, HDHKD). Imports go one way: layers <- blocks <- nets.

The names below are what the bundle configs reference (``hdhkd_monai.networks.HDHKD``).

May import ``networks`` and the layers below (``data``, ``distill``, ``pretrained``, the shared leaves); never
``baselines``, ``engines`` or ``handlers``.
"""

from .blocks import (
    GLOBAL_DECODERS,
    MIXERS,
    SS2D,
    STUDENT_BACKBONES,
    ConcatFusion,
    ConvUpsample,
    MambaUpNet,
    MultiFeatureModel,
    StudentEncoder,
    UpNetModule,
    UpsampleStem,
)
from .nets import (
    HDHKD,
    NORMAL_SCORE_QUANTILES,
    PDN,
    AnomalyMapNet,
    Detector,
    HDHKDStudent,
    PretrainedTeacher,
    TEACHERS,
    teacher_from_settings,
    teacher_settings,
)

__all__ = [
    "Detector",
    "NORMAL_SCORE_QUANTILES",
    "PDN",
    "PretrainedTeacher",
    "SS2D",
    "StudentEncoder",
    "STUDENT_BACKBONES",
    "UpsampleStem",
    "ConvUpsample",
    "UpNetModule",
    "MambaUpNet",
    "MIXERS",
    "MultiFeatureModel",
    "ConcatFusion",
    "HDHKDStudent",
    "HDHKD",
    "AnomalyMapNet",
    "GLOBAL_DECODERS",
    "TEACHERS",
    "teacher_from_settings",
    "teacher_settings",
]
