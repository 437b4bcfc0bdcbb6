"""Feature statistics around teacher distillation: target statistics before, PDN output statistics after."""

from __future__ import annotations

from collections.abc import Iterable

from ignite.engine import Engine, Events

from hdhkd_monai.distill import TeacherDistillation, fit_teacher_stats

__all__ = ["TeacherStatsHandler"]


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
