"""Nets: whole models (the teachers and HDHKD with its inference wrapper).

May import ``networks.blocks``, ``networks.layers``, ``anomaly_map``, ``state_dict``, ``distill`` and ``pretrained``.
"""

from .hdhkd import GLOBAL_DECODERS, HDHKD, AnomalyMapNet, HDHKDStudent
from .pdn import PDN
from .pretrained_teacher import PretrainedTeacher

__all__ = ["GLOBAL_DECODERS", "HDHKD", "AnomalyMapNet", "HDHKDStudent", "PDN", "PretrainedTeacher"]
