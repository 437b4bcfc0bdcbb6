"""Blocks: the reusable modules HDHKD is assembled from (encoder, decoders, token mixers, SS2D, MFM, teacher
statistics, the patch memory).

May import ``networks.layers`` and ``hdhkd_monai.pretrained``; never ``networks.nets``.
"""

from .convolutions import PatchExpand, conv_block
from .decoders import ConvUpsample, MambaUpNet, UpNetModule, UpsampleStem
from .mfm import ConcatFusion, MultiFeatureModel
from .mixers import (
    GLOBAL_DECODERS,
    MIXERS,
    AttentionMixer,
    ConvMixer,
    DenseMixer,
    DepthwiseConvMixer,
    Mixer,
    MixerOptions,
)
from .patch_memory import PatchMemory, k_center_greedy, nearest_neighbours
from .ss2d import SS2D
from .student_encoder import STUDENT_BACKBONES, StudentEncoder
from .teacher_stats import TeacherFeatureStats

__all__ = [
    "PatchExpand",
    "conv_block",
    "MIXERS",
    "GLOBAL_DECODERS",
    "Mixer",
    "MixerOptions",
    "ConvUpsample",
    "MambaUpNet",
    "UpNetModule",
    "UpsampleStem",
    "ConcatFusion",
    "MultiFeatureModel",
    "AttentionMixer",
    "ConvMixer",
    "DenseMixer",
    "DepthwiseConvMixer",
    "PatchMemory",
    "k_center_greedy",
    "nearest_neighbours",
    "SS2D",
    "STUDENT_BACKBONES",
    "StudentEncoder",
    "TeacherFeatureStats",
]
