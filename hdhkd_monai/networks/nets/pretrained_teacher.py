"""A frozen pretrained CNN used directly as the teacher, in place of a PDN distilled from it.

May import ``networks`` and the layers below (``data``, ``distill``, ``pretrained``, the shared leaves); never
``baselines``, ``engines`` or ``handlers``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, Tuple

from ...distill import PatchCoreTarget
from ..blocks.teacher_stats import TeacherFeatureStats

__all__ = ["PretrainedTeacher"]


class PretrainedTeacher(TeacherFeatureStats):
    """The PDN's distillation target, frozen, serving as the teacher itself.

    A PDN distilled on a few hundred CPU iterations keeps only part of its target's signal (docs/results.md,
    diagnosis), and the PDN-S alone costs 30 GFLOPs at 256x256, while the EfficientNet-Lite0 layers it imitates cost
    well under one. This module gives HDHKD those target features (PatchCore's locally aware patch features,
    :class:`~hdhkd_monai.distill.PatchCoreTarget`) with the PDN's teacher interface: ``out_channels``, ``border``,
    ``output_size`` and the feature statistics of :class:`~hdhkd_monai.networks.blocks.teacher_stats.TeacherFeatureStats`.

    Args:
        backbone, weights, layers, out_channels, normalization: see :class:`~hdhkd_monai.distill.PatchCoreTarget`. The bundle's
            teacher (``teacher_backbone``, ``teacher_weights``) is stated in ``train.json`` only.

    forward: ``[B, 3, H, W]`` in ``[0, 1]`` -> raw features ``[B, out_channels, H/s, W/s]``, ``s`` the stride of the
    shallowest layer (8 for the default layers).
    """

    def __init__(
        self,
        backbone: str,
        weights: str | Path | None,
        layers: Sequence[int] = (2, 3),
        out_channels: int = 384,
        normalization: str = "backbone",
    ) -> None:
        super().__init__(out_channels)
        self.target = PatchCoreTarget(backbone, weights, layers, out_channels, normalization)
        self.settings = {"backbone": backbone, "weights": None if weights is None else str(weights),
                         "layers": list(layers), "out_channels": out_channels, "normalization": normalization}
        self.stride = self.target.stride
        self.border = 0  # zero-padded convolutions: one cell per stride over the whole image

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.target(x)

    def output_size(self, size: Tuple[int, int]) -> Tuple[int, int]:
        """Feature grid ``(h, w)`` for an input of spatial ``size`` ``(H, W)`` (the timm stages round up)."""
        return tuple(-(-s // self.stride) for s in size)
