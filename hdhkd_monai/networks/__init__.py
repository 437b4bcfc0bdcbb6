"""HDHKD networks: the teachers (PDN, frozen pretrained CNN), the student (encoder, decoders, fusion) and the model wrappers."""

from .decoders import MIXERS, ConvUpsample, MambaUpNet, UpNetModule, UpsampleStem
from .hdhkd import GLOBAL_DECODERS, HDHKD, AnomalyMapNet, HDHKDStudent
from .mfm import ConcatFusion, MultiFeatureModel
from .pdn import PDN
from .pretrained_teacher import PretrainedTeacher
from .ss2d import SS2D
from .student import STUDENT_BACKBONES, StudentEncoder

__all__ = [
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
]
