"""Small building blocks shared by the HDHKD decoders.

Token mixers take and return channels-last maps ``[B, H, W, C]`` so that any of them can stand where SS2D stands in
a Mamba UpNet module (Table V: SS2D off; Table VII: decoder swaps).
"""

from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F
from einops.layers.torch import Rearrange
from monai.data import MetaTensor
from monai.networks.blocks import Convolution
from torch import nn

__all__ = [
    "plain_tensor",
    "conv_block",
    "resize",
    "PatchExpand",
    "DepthwiseConvMixer",
    "ConvMixer",
    "AttentionMixer",
    "DenseMixer",
]


def plain_tensor(x: torch.Tensor) -> torch.Tensor:
    """``x`` without MONAI metadata: the output of MONAI transforms is a ``MetaTensor``, which some ops reject (the
    selective scan's ``new_empty``) and whose metadata tracking slows every op. TorchScript sees plain tensors only."""
    if not torch.jit.is_scripting() and isinstance(x, MetaTensor):
        return x.as_tensor()
    return x


def conv_block(
    in_channels: int, out_channels: int, stride: int = 1, act: str | tuple = "relu", norm: str | tuple = "batch"
) -> nn.Module:
    """3x3 convolution, then norm and activation (MONAI ``Convolution``); ``stride`` 2 halves the grid (ceil)."""
    return Convolution(2, in_channels, out_channels, strides=stride, kernel_size=3, act=act, norm=norm)


def resize(x: torch.Tensor, size: List[int]) -> torch.Tensor:
    """Bilinear resize of ``[B, C, h, w]`` to ``[B, C, *size]`` (an exact copy when the size already matches)."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


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


class DepthwiseConvMixer(nn.Module):
    """Depthwise ``kernel_size`` convolution: the local token mixer that replaces SS2D when SS2D is off (Table V).

    forward: ``[B, H, W, C] -> [B, H, W, C]``.
    """

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class ConvMixer(nn.Module):
    """Two dense 3x3 convolutions (conv-norm-act, then a plain conv): the token mixer of the Conv decoder of Table VII.

    forward: ``[B, H, W, C] -> [B, H, W, C]``.
    """

    def __init__(self, channels: int, act: str | tuple = "relu", norm: str | tuple = "batch") -> None:
        super().__init__()
        self.convs = nn.Sequential(
            conv_block(channels, channels, act=act, norm=norm), nn.Conv2d(channels, channels, 3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class AttentionMixer(nn.Module):
    """A pre-norm Transformer encoder block (multi-head self-attention over all ``H*W`` tokens, then a GELU MLP of
    width ``4*C``): the token mixer of the Transformer decoder of Table VII.

    forward: ``[B, H, W, C] -> [B, H, W, C]``.
    """

    def __init__(self, channels: int, num_heads: int = 4) -> None:
        super().__init__()
        self.block = nn.TransformerEncoderLayer(
            channels, num_heads, 4 * channels, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        return self.block(x.reshape(b, h * w, c)).reshape(b, h, w, c)


class DenseMixer(nn.Module):
    """Fully connected layers over the flattened spatial map: each channel's ``H*W`` values pass
    ``Linear(H*W, hidden) -> GELU -> Linear(hidden, H*W)`` (weights shared across channels). This is the token mixer of
    the FCN decoder of Table VII; its size is tied to the grid, so the model only accepts one input size.

    forward: ``[B, H, W, C] -> [B, H, W, C]`` with ``H*W == tokens``.
    """

    def __init__(self, tokens: int, hidden: int = 1024) -> None:
        super().__init__()
        self.tokens = tokens
        self.mlp = nn.Sequential(nn.Linear(tokens, hidden), nn.GELU(), nn.Linear(hidden, tokens))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        if h * w != self.tokens:
            raise ValueError(
                f"the FCN decoder was built for {self.tokens} tokens per map but got {h}x{w}; "
                "build the model with the image_size it is run at"
            )
        t = self.mlp(x.reshape(b, h * w, c).transpose(1, 2))
        return t.transpose(1, 2).reshape(b, h, w, c)
