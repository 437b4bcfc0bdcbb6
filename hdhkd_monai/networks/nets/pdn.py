"""The teacher: EfficientAD's patch description network (PDN).

May import ``networks`` and the layers below (``data``, ``distill``, ``pretrained``, the shared leaves); never
``baselines``, ``engines`` or ``handlers``.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from ..blocks.teacher_stats import TeacherFeatureStats

__all__ = ["PDN"]


class PDN(TeacherFeatureStats):
    """Patch description network (EfficientAD): four (small) or six (medium) convolutions with two 2x2 average pools,
    so every output cell describes a 33x33 patch of the input at stride 4.

    Args:
        size: ``"small"`` (128/256/256 channels, about 2.7 M parameters) or ``"medium"`` (256/512/512/512).
        out_channels: feature channels (384 in the paper).
        padding: ``False`` keeps only cells whose 33x33 patch lies inside the image (56x56 for 256x256; the first cell
            is centred on input pixel 16, i.e. ``border = 4`` cells in from a stride-4 grid); ``True`` zero-pads so the
            grid is ``H/4 x W/4`` (64x64 for 256x256).
        in_channels: image channels.

    The per-channel feature statistics on normal images (set by the teacher-distillation workflow) come from
    :class:`~hdhkd_monai.networks.blocks.teacher_stats.TeacherFeatureStats`. The network takes images as given (the project feeds ``[0, 1]``); it is trainable on its own, and
    :class:`~hdhkd_monai.networks.nets.hdhkd.HDHKD` freezes it.

    forward: ``[B, in_channels, H, W] -> [B, out_channels, h, w]`` raw features, ``(h, w) = output_size((H, W))``.
    """

    def __init__(self, size: str = "small", out_channels: int = 384, padding: bool = False, in_channels: int = 3):
        super().__init__(out_channels)
        p = 1 if padding else 0
        if size == "small":
            layers = [
                nn.Conv2d(in_channels, 128, 4, padding=3 * p), nn.ReLU(inplace=True), nn.AvgPool2d(2, 2, padding=p),
                nn.Conv2d(128, 256, 4, padding=3 * p), nn.ReLU(inplace=True), nn.AvgPool2d(2, 2, padding=p),
                nn.Conv2d(256, 256, 3, padding=p), nn.ReLU(inplace=True),
                nn.Conv2d(256, out_channels, 4),
            ]  # fmt: skip
        elif size == "medium":
            layers = [
                nn.Conv2d(in_channels, 256, 4, padding=3 * p), nn.ReLU(inplace=True), nn.AvgPool2d(2, 2, padding=p),
                nn.Conv2d(256, 512, 4, padding=3 * p), nn.ReLU(inplace=True), nn.AvgPool2d(2, 2, padding=p),
                nn.Conv2d(512, 512, 1), nn.ReLU(inplace=True),
                nn.Conv2d(512, 512, 3, padding=p), nn.ReLU(inplace=True),
                nn.Conv2d(512, out_channels, 4), nn.ReLU(inplace=True),
                nn.Conv2d(out_channels, out_channels, 1),
            ]  # fmt: skip
        else:
            raise ValueError(f"PDN size must be 'small' or 'medium', got {size!r}")
        self.features = nn.Sequential(*layers)
        self.size, self.padding = size, padding
        self.settings = {"size": size, "out_channels": out_channels, "padding": bool(padding), "in_channels": in_channels}
        self.stride = 4
        self.border = 0 if padding else 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def output_size(self, size: Tuple[int, int]) -> Tuple[int, int]:
        """Feature grid ``(h, w)`` for an input of spatial ``size`` ``(H, W)``, e.g. ``(256, 256) -> (56, 56)``."""
        h, w = size
        for layer in self.features:
            if isinstance(layer, (nn.Conv2d, nn.AvgPool2d)):
                k, s, p = (_pair(getattr(layer, a)) for a in ("kernel_size", "stride", "padding"))
                h = (h + 2 * p[0] - k[0]) // s[0] + 1
                w = (w + 2 * p[1] - k[1]) // s[1] + 1
        return h, w


def _pair(v) -> Tuple[int, int]:
    return (v, v) if isinstance(v, int) else (v[0], v[1])
