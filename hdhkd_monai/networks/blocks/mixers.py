"""Token mixers that can stand where SS2D stands in a Mamba UpNet module (Table V: SS2D off; Table VII: decoder
swaps). Each takes and returns channels-last maps ``[B, H, W, C]``.

May import ``networks.layers`` and ``networks.blocks.convolutions``.
"""

from __future__ import annotations

import torch
from torch import nn

from .convolutions import conv_block

__all__ = ["DepthwiseConvMixer", "ConvMixer", "AttentionMixer", "DenseMixer"]


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
