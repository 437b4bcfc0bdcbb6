"""Nets: whole models (the detector contract, the teachers, HDHKD and the single-tensor export wrapper).

May import ``networks.blocks``, ``networks.layers``, ``anomaly_map``, ``state_dict``, ``distill`` and ``pretrained``.
"""

from .detector import NORMAL_SCORE_QUANTILES, Detector
from .hdhkd import HDHKD, AnomalyMapNet, HDHKDStudent
from .pdn import PDN
from .pretrained_teacher import PretrainedTeacher
from .teachers import TEACHERS, teacher_from_settings, teacher_settings

__all__ = ["Detector", "NORMAL_SCORE_QUANTILES", "HDHKD", "AnomalyMapNet", "HDHKDStudent", "PDN", "PretrainedTeacher",
           "TEACHERS", "teacher_from_settings", "teacher_settings"]
