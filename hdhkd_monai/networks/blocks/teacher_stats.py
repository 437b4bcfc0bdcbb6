"""What every teacher shares: the per-channel statistics of its features on normal images.

May import ``networks.blocks``, ``networks.layers`` and the layers below (``data``, ``distill``, ``pretrained``, the
shared leaves); never ``networks.nets``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TeacherFeatureStats"]


class TeacherFeatureStats(nn.Module):
    """Base of the teachers (:class:`~hdhkd_monai.networks.nets.pdn.PDN`,
    :class:`~hdhkd_monai.networks.nets.pretrained_teacher.PretrainedTeacher`).

    Buffers ``feat_mean`` and ``feat_std`` ``[1, out_channels, 1, 1]`` (0 and 1 until
    :func:`hdhkd_monai.distill.fit_teacher_stats` sets them on normal images) travel with the checkpoint, so that
    :meth:`normalize` gives the student the same targets at training and at inference. Subclasses set ``settings``,
    the constructor arguments that identify them, which ``HDHKD`` stores with its checkpoint.
    """

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.register_buffer("feat_mean", torch.zeros(1, out_channels, 1, 1))
        self.register_buffer("feat_std", torch.ones(1, out_channels, 1, 1))

    def normalize(self, f: torch.Tensor) -> torch.Tensor:
        """``(f - feat_mean) / feat_std``, per channel: ``[B, C, h, w] -> [B, C, h, w]``."""
        return (f - self.feat_mean) / self.feat_std
