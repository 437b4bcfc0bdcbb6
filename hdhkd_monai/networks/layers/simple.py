"""Tensor helpers the blocks and nets share: MONAI metadata stripped for TorchScript and speed, bilinear resize.

May import torch and MONAI only.
"""

from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F
from monai.data import MetaTensor

__all__ = ["plain_tensor", "resize"]


def plain_tensor(x: torch.Tensor) -> torch.Tensor:
    """``x`` without MONAI metadata: the output of MONAI transforms is a ``MetaTensor``, which some ops reject (the
    selective scan's ``new_empty``) and whose metadata tracking slows every op. TorchScript sees plain tensors only."""
    if not torch.jit.is_scripting() and isinstance(x, MetaTensor):
        return x.as_tensor()
    return x


def resize(x: torch.Tensor, size: List[int]) -> torch.Tensor:
    """Bilinear resize of ``[B, C, h, w]`` to ``[B, C, *size]`` (an exact copy when the size already matches)."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
