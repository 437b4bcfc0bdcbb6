"""Token mixers that can stand where SS2D stands in a Mamba UpNet module (Table V: SS2D off; Table VII: decoder
swaps), and :data:`MIXERS`, their one registry. Each takes and returns channels-last maps ``[B, H, W, C]``.

May import ``networks.layers`` and the other blocks' modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional

import torch
from torch import nn

from .convolutions import conv_block
from .ss2d import SS2D

__all__ = ["MIXERS", "GLOBAL_DECODERS", "Mixer", "MixerOptions", "DepthwiseConvMixer", "ConvMixer", "AttentionMixer",
           "DenseMixer"]


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


@dataclass(frozen=True)
class MixerOptions:
    """What a mixer factory may need besides the channels: SS2D's state size and scan backend, the stride-4 grid
    (the FCN mixer's weights depend on it) and the conv blocks' activation and norm."""

    d_state: int = 16
    grid_size: Optional[List[int]] = None
    scan_backend: str = "auto"
    act: str | tuple = "relu"
    norm: str | tuple = "batch"


@dataclass(frozen=True)
class Mixer:
    """A registered token mixer: ``build(channels, options)`` makes it; ``decoder`` is the ``global_decoder`` name
    (Table VII) under which the UpNet uses it, or None for a mixer reached otherwise (``dwconv``: ``ss2d=False``)."""

    build: Callable[[int, MixerOptions], nn.Module]
    decoder: Optional[str] = None


def _dense(channels: int, options: MixerOptions) -> nn.Module:
    if options.grid_size is None:
        raise ValueError("the 'dense' (FCN) mixer needs grid_size: build the model with image_size")
    return DenseMixer(options.grid_size[0] * options.grid_size[1])


#: The token mixers of the UpNet modules, by name: adding one is one entry here (and, for the tables, one config).
MIXERS = {
    "ss2d": Mixer(lambda c, o: SS2D(c, d_state=o.d_state, scan_backend=o.scan_backend), decoder="mamba"),
    "dwconv": Mixer(lambda c, o: DepthwiseConvMixer(c)),
    "attention": Mixer(lambda c, o: AttentionMixer(c), decoder="transformer"),
    "dense": Mixer(_dense, decoder="fcn"),
    "conv": Mixer(lambda c, o: ConvMixer(c, act=o.act, norm=o.norm), decoder="conv"),
}
#: ``global_decoder`` choices (Table VII) and the mixer each one uses, read off :data:`MIXERS`.
GLOBAL_DECODERS = {mixer.decoder: name for name, mixer in MIXERS.items() if mixer.decoder is not None}
