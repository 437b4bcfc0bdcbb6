"""The distilled teacher: feature statistics around its distillation, and loading it for student training.

May import ``engines``, ``handlers``, ``baselines``, ``networks``, ``data`` and the layers below; never the
launcher, ``zoo`` or ``demo``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ignite.engine import Engine, Events
from torch import nn

from hdhkd_monai.distill import TeacherDistillation, fit_teacher_stats
from hdhkd_monai.handlers.checkpoint import load_network

__all__ = ["FitTeacherStats", "TEACHER_COMMAND", "TeacherStatsHandler", "load_teacher"]

#: The workflow that writes ``teacher.pt``, as run from the bundle root.
TEACHER_COMMAND = (
    "python -m monai.bundle run --config_file \"['configs/train.json','configs/paper.json','configs/train_teacher.json']\""
)


def load_teacher(teacher: nn.Module, path: str | Path) -> nn.Module:
    """``teacher`` with the weights of the distilled teacher at ``path`` (entry ``"teacher"``); when the file is
    missing, the error names the command that distils it."""
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"checkpoint not found: {path}. Student training needs the distilled teacher first; from the bundle root: "
            f"{TEACHER_COMMAND} with the same --bundle_root and --dataset_dir (or point --teacher_ckpt at one)."
        )
    return load_network(teacher, path, key="teacher")


class TeacherStatsHandler:
    """On the teacher-distillation trainer:

    - when training starts, fit the PatchCore target's channel mean/std (``distillation.fit_target_stats``), which
      normalise the regression targets;
    - when training completes, store the channel mean/std of the distilled PDN's outputs (``fit_teacher_stats``)
      in its ``feat_mean``/``feat_std`` buffers, so student training sees normalised teacher features.

    Attach it before the checkpoint saver so the saved teacher carries its statistics.

    Args:
        distillation: the ``TeacherDistillation`` module being trained (its ``teacher`` is the PDN).
        images: a data loader of ``{"image": [B, 3, H, W]}`` batches (a seeded shuffle of the training images).
        max_images: how many images the statistics use (``None``: all of them).
    """

    def __init__(self, distillation: TeacherDistillation, images: Iterable, max_images: int | None = None) -> None:
        self.distillation = distillation
        self.images = images
        self.max_images = max_images

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._fit_target_stats)
        engine.add_event_handler(Events.COMPLETED, self._store_teacher_stats)

    def _fit_target_stats(self, engine: Engine) -> None:
        self.distillation.fit_target_stats(self.images, max_images=self.max_images)

    def _store_teacher_stats(self, engine: Engine) -> None:
        fit_teacher_stats(self.distillation.teacher, self.images, max_images=self.max_images)
        engine.logger.info("stored the teacher's output statistics in its feat_mean/feat_std buffers")


class FitTeacherStats:
    """On the student trainer, when training starts: fit the frozen pretrained teacher's feature statistics on the
    training images (:func:`~hdhkd_monai.distill.fit_teacher_stats`).

    A handler rather than a step of building the network, so that evaluation, which builds the same network from
    ``train.json`` and then loads ``model.pt`` (whose teacher carries the statistics), does not fit them again.
    Attach it before the resume handler: a resumed run then takes the statistics from its checkpoint.

    Args:
        teacher: the teacher (``feat_mean``/``feat_std`` buffers).
        images: a data loader of ``{"image": [B, 3, H, W]}`` batches.
        max_images: how many images the statistics use (``None``: all of them).
        enabled: ``False`` for a teacher whose statistics come with it (the paper's distilled PDN, ``teacher.pt``).
    """

    def __init__(self, teacher: nn.Module, images: Iterable, max_images: int | None = None, enabled: bool = True):
        self.teacher = teacher
        self.images = images
        self.max_images = max_images
        self.enabled = enabled

    def attach(self, engine: Engine) -> None:
        if self.enabled:
            engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        fit_teacher_stats(self.teacher, self.images, max_images=self.max_images)
