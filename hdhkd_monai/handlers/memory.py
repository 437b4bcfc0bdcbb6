"""Fitting HDHKD's patch memory on the normal training images when student training starts.

May import ``networks`` and ``distill``; not the other handlers.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Optional

import torch
from ignite.engine import Engine, Events
from torch import nn
from tqdm.auto import tqdm

from hdhkd_monai.distill import device_of, image_batch
from hdhkd_monai.networks.blocks import PatchMemory

__all__ = ["FitPatchMemory"]


class FitPatchMemory:
    """On the student trainer, when training starts: fit ``memory`` on the teacher features of every training image.

    The features are ``model.teacher_features``, the frozen teacher's normalised ones, so attach this after
    :class:`~hdhkd_monai.handlers.FitTeacherStats` (the normalisation needs the statistics) and before the resume
    handler (a resumed run then takes the bank from its checkpoint). Like the statistics, the bank does not depend on
    the student, so it is fitted once, before the first step; evaluation loads it with ``model.pt``.

    Args:
        memory: the model's :class:`~hdhkd_monai.networks.blocks.PatchMemory`, or ``None`` (a model without one,
            a baseline for instance: nothing to fit, and ``model`` is not used).
        model: the HDHKD model whose ``teacher_features`` ``[B, 3, H, W] -> [B, C, h, w]`` the memory scores.
        images: a data loader of ``{"image": [B, 3, H, W]}`` batches of the training images.
    """

    def __init__(self, memory: Optional[PatchMemory], model: nn.Module, images: Iterable):
        self.memory = memory
        self.model = model
        self.images = images

    def attach(self, engine: Engine) -> None:
        if self.memory is not None:
            engine.add_event_handler(Events.STARTED, self)

    @torch.no_grad()
    def __call__(self, engine: Engine) -> None:
        device = device_of(self.model)
        patches = [
            self.model.teacher_features(image_batch(batch).to(device)).permute(0, 2, 3, 1).flatten(0, 2).cpu()
            for batch in tqdm(self.images, desc="patch memory: features", unit="batch")
        ]
        if not patches:
            raise ValueError("cannot fit the patch memory: the training data loader gave no images")
        patches = torch.cat(patches)
        self.memory.fit(patches.to(self.memory.bank.device))
        engine.logger.info("patch memory: %d of %d training patches kept", len(self.memory.bank), len(patches))
