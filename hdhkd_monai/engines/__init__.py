"""Ignite engines of the bundle workflows: distillation training and anomaly-map evaluation."""

from hdhkd_monai.engines.evaluator import AnomalyEvaluator
from hdhkd_monai.engines.trainer import DistillationTrainer, FitTrainer

__all__ = ["AnomalyEvaluator", "DistillationTrainer", "FitTrainer"]
