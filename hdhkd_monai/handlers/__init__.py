"""Ignite handlers of the bundle workflows: checkpoints, validation schedule, calibration, reports.

May import ``engines``, ``handlers``, ``baselines``, ``networks``, ``data`` and the layers below; never the
launcher, ``zoo`` or ``demo``.
"""

from hdhkd_monai.handlers.auroc import ImageAUROC
from hdhkd_monai.handlers.calibration import CalibrationHandler
from hdhkd_monai.handlers.checkpoint import (
    MODEL_CKPT,
    AtomicCheckpointSaver,
    CheckpointMismatchError,
    NamedCheckpointLoader,
    ResumeFromCheckpoint,
    load_checkpoint,
    load_network,
    save_checkpoint,
    settings_group,
    stored_settings,
    stored_teacher,
)
from hdhkd_monai.handlers.fit import FitOnData
from hdhkd_monai.handlers.memory import FitPatchMemory
from hdhkd_monai.handlers.inference import InferenceWriter, output_root
from hdhkd_monai.handlers.outputs import OutputSet
from hdhkd_monai.handlers.preflight import TrainingPreflight
from hdhkd_monai.handlers.report import EvaluationReport
from hdhkd_monai.handlers.sampler import ReshuffleOnRestart, SeededShuffle
from hdhkd_monai.handlers.scores import ScoreWriter
from hdhkd_monai.handlers.teacher import FitTeacherStats, TeacherStatsHandler, load_teacher
from hdhkd_monai.handlers.validation import IterationValidationHandler

__all__ = [
    "AtomicCheckpointSaver",
    "CalibrationHandler",
    "CheckpointMismatchError",
    "EvaluationReport",
    "FitOnData",
    "FitPatchMemory",
    "FitTeacherStats",
    "ImageAUROC",
    "InferenceWriter",
    "IterationValidationHandler",
    "MODEL_CKPT",
    "NamedCheckpointLoader",
    "OutputSet",
    "ResumeFromCheckpoint",
    "ReshuffleOnRestart",
    "ScoreWriter",
    "SeededShuffle",
    "TeacherStatsHandler",
    "TrainingPreflight",
    "load_checkpoint",
    "load_network",
    "load_teacher",
    "output_root",
    "save_checkpoint",
    "settings_group",
    "stored_settings",
    "stored_teacher",
]
