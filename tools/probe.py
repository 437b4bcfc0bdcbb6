"""Teacher probe: how much anomaly signal a feature extractor carries before any student is trained.

Each test image is scored by its largest nearest-neighbour distance between its patch features and all patch
features of the normal training images (PatchCore without the coreset). A student can only learn to imitate its
teacher, so a teacher whose probe AUROC is already low caps the detector built on it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from einops import rearrange

__all__ = ["patch_features", "nearest_neighbour_scores"]


@torch.no_grad()
def patch_features(features: Callable[[torch.Tensor], torch.Tensor], batches: Iterable[torch.Tensor]) -> torch.Tensor:
    """``features`` of every batch ``[B, 3, H, W]``, stacked as ``[N, h*w, C]`` patch vectors (one row per image)."""
    return torch.cat([rearrange(features(x), "b c h w -> b (h w) c") for x in batches])


@torch.no_grad()
def nearest_neighbour_scores(bank: torch.Tensor, queries: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Image scores ``[M]``: for each query image, the largest distance from one of its patches to its nearest bank
    patch.

    Args:
        bank: ``[N, P, C]`` patch features of normal images (all ``N * P`` patches form the memory bank).
        queries: ``[M, Q, C]`` patch features of the images to score.
        chunk: query patches per distance block (bounds memory at ``chunk * N * P`` floats).
    """
    if bank.shape[-1] != queries.shape[-1]:
        raise ValueError(f"bank has {bank.shape[-1]} channels but the queries have {queries.shape[-1]}")
    memory = bank.flatten(0, 1)
    flat = queries.flatten(0, 1)
    nearest = torch.cat([torch.cdist(q, memory).amin(dim=1) for q in flat.split(chunk)])
    return nearest.view(queries.shape[:2]).amax(dim=1)
