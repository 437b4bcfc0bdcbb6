"""Ignite engines of the bundle workflows: distillation training and anomaly-map evaluation.

May import ``engines``, ``handlers``, ``baselines``, ``networks``, ``data`` and the layers below; never the
launcher, ``zoo`` or ``demo``.
"""

from hdhkd_monai.engines.evaluator import AnomalyEvaluator
from hdhkd_monai.engines.trainer import DistillationTrainer, FitTrainer

__all__ = ["AnomalyEvaluator", "DistillationTrainer", "FitTrainer"]
