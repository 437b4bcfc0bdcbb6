"""The two student decoders of Algorithm 1: the Conv Upsample branch and the Mamba UpNet branch.

Grids, as strides of the input: f_se is at 16, U1 at 8, both branches work at 4 (the teacher's stride) and end with a
bilinear resize onto the teacher's exact grid (56x56 for a 256x256 input without PDN padding, an exact copy with it).

May import ``networks.blocks``, ``networks.layers`` and the layers below (``data``, ``distill``, ``pretrained``, the
shared leaves); never ``networks.nets``.
"""

from __future__ import annotations

from typing import List

import torch
from torch import nn

from ..layers.simple import resize
from .convolutions import PatchExpand, conv_block
from .mixers import MIXERS, MixerOptions

__all__ = ["UpsampleStem", "ConvUpsample", "UpNetModule", "MambaUpNet"]


class UpsampleStem(nn.Module):
    """U1 = Conv(Conv(Upsample(f_se))) (Algorithm 1, line 2): the first half of the Conv Upsample branch, shared with
    the global decoder.

    forward: ``[B, in_channels, h, w] -> [B, channels, 2h, 2w]``.
    """

    def __init__(self, in_channels: int, channels: int, act: str | tuple = "relu", norm: str | tuple = "batch"):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            conv_block(in_channels, channels, act=act, norm=norm),
            conv_block(channels, channels, act=act, norm=norm),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ConvUpsample(nn.Module):
    """f_local = Conv(Upsample(U1)) (eq. 3): the local branch's last step, a plain 3x3 convolution to the teacher's
    channels on the stride-4 grid, resized onto the teacher grid.

    forward: ``(U1 [B, in_channels, h, w], out_size) -> [B, out_channels, *out_size]``.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, u1: torch.Tensor, out_size: List[int]) -> torch.Tensor:
        return resize(self.conv(self.up(u1)), out_size)


class UpNetModule(nn.Module):
    """One Mamba UpNet module (Algorithm 1, MAMBA MODULE): PatchExpand, LayerNorm, token mixer, skip add, Conv,
    Dropout: ``Dropout(Conv(mixer(LN(U_pe)) + U_pe))``.

    Args:
        in_channels, channels: channels before and after PatchExpand.
        scale: grid growth of PatchExpand (2 in the first module, 1 after: the grid stops at the teacher's stride).
        mixer: the token mixer, ``[B, H, W, channels] -> [B, H, W, channels]`` (SS2D in the paper).
        dropout: dropout probability after the conv.
        act, norm: of the conv.

    forward: ``[B, in_channels, h, w] -> [B, channels, h*scale, w*scale]``.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        scale: int,
        mixer: nn.Module,
        dropout: float = 0.2,
        act: str | tuple = "relu",
        norm: str | tuple = "batch",
    ):
        super().__init__()
        self.expand = PatchExpand(in_channels, channels, scale)
        self.norm = nn.LayerNorm(channels)
        self.mixer = mixer
        self.conv = conv_block(channels, channels, act=act, norm=norm)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.expand(x.permute(0, 2, 3, 1))
        t = t + self.mixer(self.norm(t))
        return self.drop(self.conv(t.permute(0, 3, 1, 2)))


class MambaUpNet(nn.Module):
    """Mamba UpNet branch (Algorithm 1): ``num_modules`` :class:`UpNetModule` from U1 (stride 8). The first module's
    PatchExpand doubles the grid to stride 4 and halves the channels; the later ones keep both. A 1x1 convolution
    maps to the teacher's channels and a bilinear resize puts f_global on the teacher grid.

    Args:
        in_channels: channels of U1; the modules run at ``in_channels // 2`` (``d_model`` of SS2D).
        out_channels: teacher channels.
        num_modules: number of modules (N_mamba, 4 in the paper).
        mixer: token mixer, a name in :data:`~.mixers.MIXERS`: ``"ss2d"`` (the paper), ``"dwconv"`` (Table V, SS2D off: a 3x3
            depthwise convolution), ``"attention"`` / ``"dense"`` / ``"conv"`` (Table VII: Transformer, FCN, Conv).
        d_state: SS2D state size.
        dropout: dropout of every module.
        grid_size: ``(h, w)`` of the stride-4 grid (``image_size / 4``); needed only by ``"dense"``, whose weights
            depend on the number of tokens.
        scan_backend: selective-scan backend of SS2D.
        act, norm: of the module convs.

    forward: ``(U1 [B, in_channels, h, w], out_size) -> f_global [B, out_channels, *out_size]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_modules: int = 4,
        mixer: str = "ss2d",
        d_state: int = 16,
        dropout: float = 0.2,
        grid_size: List[int] | None = None,
        scan_backend: str = "auto",
        act: str | tuple = "relu",
        norm: str | tuple = "batch",
    ):
        super().__init__()
        if num_modules < 1:
            raise ValueError(f"num_modules must be at least 1, got {num_modules}")
        if in_channels % 2:
            raise ValueError(f"the UpNet halves the channels of U1, so they must be even, got {in_channels}")
        channels = in_channels // 2
        if mixer not in MIXERS:
            raise ValueError(f"unknown mixer {mixer!r}; choose one of {tuple(MIXERS)}")
        options = MixerOptions(d_state, grid_size, scan_backend, act, norm)
        self.blocks = nn.Sequential(*[
            UpNetModule(in_channels if i == 0 else channels, channels, 2 if i == 0 else 1,
                        MIXERS[mixer].build(channels, options), dropout, act, norm)
            for i in range(num_modules)
        ])  # fmt: skip
        self.head = nn.Conv2d(channels, out_channels, 1)

    def forward(self, u1: torch.Tensor, out_size: List[int]) -> torch.Tensor:
        return resize(self.head(self.blocks(u1)), out_size)
