"""Fusion of the decoder branches: the Multi-Feature Model (eq. 4) and the 1x1 fusion used when it is ablated.

May import ``networks.blocks``, ``networks.layers`` and the layers below (``data``, ``distill``, ``pretrained``, the
shared leaves); never ``networks.nets``.
"""

from __future__ import annotations

from typing import List

import torch
from torch import nn

from ..layers.simple import resize
from .convolutions import conv_block

__all__ = ["MultiFeatureModel", "ConcatFusion"]


class MultiFeatureModel(nn.Module):
    """Multi-Feature Model (eq. 4)::

        f_m  = ConCat(Conv(f_1), ..., Conv(f_n))           3x3 conv-norm-act per branch
        f_m' = Upsample(DWConv(MaxPool(f_m)))              2x2 max pool; depthwise 3x3 + pointwise 1x1; bilinear
        f_sd = Conv(f_m * f_m')                            plain 3x3 conv to out_channels

    With one branch (Table V, MFM without the Conv Upsample branch) ``f_m = Conv(f_1)``.

    Args:
        num_inputs: number of branches (1 or 2).
        in_channels: channels of every branch output.
        out_channels: teacher channels.
        branch_channels: channels of each ``Conv(f_i)``; ``None`` gives ``out_channels // 2``.
        act, norm: of the branch convs.

    forward: ``[f_1, ..., f_n]`` each ``[B, in_channels, h, w] -> [B, out_channels, h, w]``.
    """

    def __init__(
        self,
        num_inputs: int,
        in_channels: int,
        out_channels: int,
        branch_channels: int | None = None,
        act: str | tuple = "relu",
        norm: str | tuple = "batch",
    ):
        super().__init__()
        branch_channels = out_channels // 2 if branch_channels is None else branch_channels
        mid = num_inputs * branch_channels
        self.branch_convs = nn.ModuleList(
            conv_block(in_channels, branch_channels, act=act, norm=norm) for _ in range(num_inputs)
        )
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.dwconv = nn.Sequential(nn.Conv2d(mid, mid, 3, padding=1, groups=mid), nn.Conv2d(mid, mid, 1))
        self.out = nn.Conv2d(mid, out_channels, 3, padding=1)

    def forward(self, feats: List[torch.Tensor]) -> torch.Tensor:
        branches: List[torch.Tensor] = []
        for i, conv in enumerate(self.branch_convs):
            branches.append(conv(feats[i]))
        f_m = torch.cat(branches, dim=1)
        f_m2 = resize(self.dwconv(self.pool(f_m)), f_m.shape[-2:])
        return self.out(f_m * f_m2)


class ConcatFusion(nn.Module):
    """Fusion without the MFM (Table V): a 1x1 convolution over the concatenated branch outputs.

    forward: ``[f_1, ..., f_n]`` each ``[B, in_channels, h, w] -> [B, out_channels, h, w]``.
    """

    def __init__(self, num_inputs: int, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(num_inputs * in_channels, out_channels, 1)

    def forward(self, feats: List[torch.Tensor]) -> torch.Tensor:
        return self.conv(torch.cat(feats, dim=1))
