"""Convolution and upsampling blocks of the student: MONAI's conv-norm-act unit and the Swin-style PatchExpand.

May import ``networks.layers``, torch, einops and MONAI.
"""

from __future__ import annotations

import torch
from einops.layers.torch import Rearrange
from monai.networks.blocks import Convolution
from torch import nn

__all__ = ["conv_block", "PatchExpand"]


def conv_block(
    in_channels: int, out_channels: int, stride: int = 1, act: str | tuple = "relu", norm: str | tuple = "batch"
) -> nn.Module:
    """3x3 convolution, then norm and activation (MONAI ``Convolution``); ``stride`` 2 halves the grid (ceil)."""
    return Convolution(2, in_channels, out_channels, strides=stride, kernel_size=3, act=act, norm=norm)


class PatchExpand(nn.Module):
    """Linear projection of every token to ``scale**2 * out_channels`` features, rearranged onto a grid ``scale``
    times finer (Swin-Unet style). ``scale=1`` is a plain token-wise projection.

    forward: ``[B, h, w, in_channels] -> [B, h*scale, w*scale, out_channels]``.
    """

    def __init__(self, in_channels: int, out_channels: int, scale: int = 2) -> None:
        super().__init__()
        self.proj = nn.Linear(in_channels, scale * scale * out_channels, bias=False)
        self.to_grid = Rearrange("b h w (p1 p2 c) -> b (h p1) (w p2) c", p1=scale, p2=scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_grid(self.proj(x))
