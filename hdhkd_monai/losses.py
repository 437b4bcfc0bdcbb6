"""Training loss of the student (eq. 5).

May import ``hdhkd_monai.errors`` only.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

__all__ = ["DistillationLoss"]


class DistillationLoss(nn.Module):
    """L2 distillation loss between teacher and student features (eq. 5): the mean of ``(f_t - f_sd)**2``.

    Args:
        hard_quantile: when set (EfficientAD uses 0.999), only the hard features count, as in EfficientAD: the mean
            of the squared differences at or above their ``hard_quantile`` quantile (linear interpolation), i.e. of
            the ``n - ceil(hard_quantile * (n - 1))`` largest of the ``n`` in the batch (at least one). Selected with
            ``topk``, so unlike ``torch.quantile`` it has no size limit.

    forward: ``(f_t, f_sd)`` both ``[B, C, h, w]`` -> scalar.
    """

    def __init__(self, hard_quantile: Optional[float] = None):
        super().__init__()
        if hard_quantile is not None and not 0.0 <= hard_quantile < 1.0:
            raise ValueError(f"hard_quantile must be in [0, 1), got {hard_quantile}")
        self.hard_quantile = hard_quantile

    def forward(self, f_t: torch.Tensor, f_sd: torch.Tensor) -> torch.Tensor:
        if f_t.shape != f_sd.shape:
            raise ValueError(f"teacher features {tuple(f_t.shape)} and student features {tuple(f_sd.shape)} differ")
        d = (f_t - f_sd).pow(2)
        if self.hard_quantile is None:
            return d.mean()
        k = d.numel() - math.ceil(self.hard_quantile * (d.numel() - 1))
        return d.flatten().topk(k).values.mean()
