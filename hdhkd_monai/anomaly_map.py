"""Anomaly maps and scores from teacher/student features.

Maps are ``[B, 1, H, W]`` float tensors. The raw map is the channel mean of the squared teacher-student discrepancy
(the paper's), or one minus their cosine similarity (RD4AD's measure);
EfficientAD's normalisation maps the ``q_a`` quantile of normal maps to 0 and ``q_b`` to 0.1.

May import ``hdhkd_monai.errors`` only.
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional

import torch
import torch.nn.functional as F

__all__ = [
    "MAP_QUANTILES",
    "AnomalyPrediction",
    "discrepancy_map",
    "squared_discrepancy",
    "cosine_discrepancy",
    "DISCREPANCIES",
    "upsample_map",
    "image_score",
    "quantile",
    "map_quantiles",
    "normalize_map",
]


#: EfficientAD's map-normalisation quantiles of normal maps, sent to 0 and 0.1: the one home of the default.
MAP_QUANTILES = (0.9, 0.995)


class AnomalyPrediction(NamedTuple):
    """What a detector gives for a batch of images (the fields of anomalib's ``InferenceBatch``): ``pred_score``
    ``[B]``, higher is more anomalous, and ``anomaly_map`` ``[B, 1, H, W]`` at the input size."""

    pred_score: torch.Tensor
    anomaly_map: torch.Tensor


def squared_discrepancy(f_t: torch.Tensor, f_sd: torch.Tensor) -> torch.Tensor:
    """Channel mean of ``(f_t - f_sd)**2``: ``[B, C, h, w]`` twice -> ``[B, 1, h, w]``."""
    return (f_t - f_sd).pow(2).mean(dim=1, keepdim=True)


def cosine_discrepancy(f_t: torch.Tensor, f_sd: torch.Tensor) -> torch.Tensor:
    """``1 - cos(f_t, f_sd)`` over the channels of each cell, in ``[0, 2]``: ``[B, C, h, w]`` twice ->
    ``[B, 1, h, w]``. Blind to the length of the two feature vectors, it reads only where they point."""
    return 1 - F.cosine_similarity(f_t, f_sd, dim=1, eps=1e-8).unsqueeze(1)


#: The measures a teacher-student map can take per cell, by name (``HDHKD(discrepancy=...)``).
DISCREPANCIES = ("squared", "cosine")


def upsample_map(cells: torch.Tensor, size: List[int], border: int = 0) -> torch.Tensor:
    """A map on the feature grid ``[B, 1, h, w]``, bilinearly resized to the image ``size`` ``[H, W]``.

    ``border``: feature cells missing on each side of the grid (4 for an unpadded PDN, whose first cell is centred
    4 stride-4 cells into the image); the map is edge-padded by that much first, so that it lines up with the image
    instead of being stretched over it.
    """
    if border > 0:
        cells = F.pad(cells, [border, border, border, border], mode="replicate")
    return F.interpolate(cells, size=size, mode="bilinear", align_corners=False)


def discrepancy_map(f_t: torch.Tensor, f_sd: torch.Tensor, size: List[int], border: int = 0) -> torch.Tensor:
    """:func:`squared_discrepancy` of teacher and student features ``[B, C, h, w]``, :func:`upsample_map` to the
    image ``size`` ``[H, W]``: ``[B, 1, H, W]``."""
    return upsample_map(squared_discrepancy(f_t, f_sd), size, border)


def image_score(maps: torch.Tensor, top_k: Optional[int] = None) -> torch.Tensor:
    """Image score per map: the maximum, or the mean of the ``top_k`` largest values. ``[B, 1, H, W] -> [B]``."""
    flat = maps.flatten(1)
    if top_k is None:
        return flat.amax(dim=1)
    return flat.topk(top_k, dim=1).values.mean(dim=1)


def quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    """The ``q`` quantile of all values of ``x`` with linear interpolation (as ``torch.quantile``), without
    ``torch.quantile``'s limit of 2**24 elements (a few hundred 256x256 maps exceed it)."""
    flat = x.detach().flatten().float()
    if flat.numel() == 0:
        raise ValueError("quantile of an empty tensor")
    pos = q * (flat.numel() - 1)
    lo = int(pos)
    hi = min(lo + 1, flat.numel() - 1)
    v_lo = flat.kthvalue(lo + 1).values
    v_hi = flat.kthvalue(hi + 1).values
    return v_lo + (v_hi - v_lo) * (pos - lo)


def map_quantiles(maps: torch.Tensor, low: float = MAP_QUANTILES[0], high: float = MAP_QUANTILES[1]) -> torch.Tensor:
    """``(q_a, q_b)`` over all pixels of the (normal validation) ``maps``, as a tensor ``[2]``."""
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"need 0 <= low < high <= 1, got low={low}, high={high}")
    return torch.stack([quantile(maps, low), quantile(maps, high)])


def normalize_map(maps: torch.Tensor, quantiles: torch.Tensor) -> torch.Tensor:
    """EfficientAD map normalisation ``0.1 * (m - q_a) / (q_b - q_a)``."""
    return 0.1 * (maps - quantiles[0]) / (quantiles[1] - quantiles[0])
