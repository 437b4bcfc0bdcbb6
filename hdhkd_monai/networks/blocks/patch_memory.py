"""A memory of normal patch features and the distance of new patches to it (PatchCore's nearest-neighbour score).

May import ``torch`` and ``tqdm`` only.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import nn
from tqdm.auto import tqdm

__all__ = ["PatchMemory", "k_center_greedy", "nearest_neighbours"]


def k_center_greedy(points: torch.Tensor, n: int, start: int = 0, progress: bool = False) -> torch.Tensor:
    """Greedy k-center selection: repeatedly take the point farthest from everything selected so far.

    Args:
        points: [N, D] candidates.
        n: how many to select, 1 <= n <= N.
        start: index of the first selected point.
        progress: show a progress bar.

    Returns:
        [n] indices into ``points``, in selection order.
    """
    if not 1 <= n <= len(points):
        raise ValueError(f"cannot select {n} of {len(points)} points")
    squared_norms = points.square().sum(dim=1)
    min_dist = torch.full_like(squared_norms, math.inf)
    selected = torch.empty(n, dtype=torch.long)
    index = start
    for i in tqdm(range(n), desc="memory bank: coreset", unit="point", disable=not progress):
        selected[i] = index
        center = points[index]
        # |p - c|^2 as one matrix-vector product: the loop is memory-bound, so avoid an [N, D] temporary.
        dist = squared_norms - 2 * (points @ center) + squared_norms[index]
        min_dist = torch.minimum(min_dist, dist.clamp_min_(0))
        min_dist[index] = 0
        index = int(min_dist.argmax())
    return selected


def _nearest(queries: torch.Tensor, bank: torch.Tensor, euclidean: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Distance ``[P]`` of each query ``[P, C]`` to its nearest bank row ``[M, C]``, and that row's index ``[P]``.
    Squared: one matrix product (``|q|^2 - 2 q.b + |b|^2``); Euclidean: ``torch.cdist``. TorchScript and ONNX export
    take both."""
    if euclidean:
        nearest = torch.cdist(queries, bank).min(dim=1)
        return nearest.values, nearest.indices
    squared = queries.square().sum(1, keepdim=True) - 2 * queries @ bank.t() + bank.square().sum(1)[None]
    nearest = squared.min(dim=1)
    return nearest.values.clamp_min(0), nearest.indices


def nearest_neighbours(
    queries: torch.Tensor, bank: torch.Tensor, chunk_elements: int = 2**24, euclidean: bool = False
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Distances ``[P]`` (squared, or Euclidean with ``euclidean``) and indices ``[P]`` of each query's nearest
    bank row, in blocks of about ``chunk_elements`` distances (bounds memory for large images). A traced model
    computes one block: a trace would freeze the number of blocks of the example input, wrong for other sizes."""
    if torch.jit.is_tracing():
        return _nearest(queries, bank, euclidean)
    rows = max(1, chunk_elements // max(1, bank.shape[0]))
    values, indices = [], []
    for chunk in queries.split(rows):
        v, i = _nearest(chunk, bank, euclidean)
        values.append(v)
        indices.append(i)
    return torch.cat(values), torch.cat(indices)


class PatchMemory(nn.Module):
    """A bank of normal patch features; a new patch scores its squared distance to the nearest one.

    Args:
        channels: feature channels ``C``.
        coreset_ratio: fraction of the fitted patches kept, chosen by greedy k-center on the features.
        max_patches: upper bound on the bank's rows, or ``None``. Fitting takes ``bank rows x patches`` steps and
            scoring ``bank rows`` distances per patch, so the bound keeps both within budget as the data grows.
        seed: picks the coreset's first patch.
        chunk_elements: distances computed at once when scoring (memory bound).

    The buffer ``bank`` ``[M, C]`` is empty until :meth:`fit` (and the memory scores 0 everywhere); it travels with
    the state dict (a checkpoint's bank of any size loads). ``settings`` are the arguments that change the scores.

    forward: features ``[B, C, h, w]`` -> ``[B, 1, h, w]``, the squared distance of each cell's feature to the
    nearest bank row divided by ``C``: a mean squared channel difference, the units of the teacher-student
    discrepancy map when the features are the teacher's normalised ones.
    """

    def __init__(
        self,
        channels: int,
        coreset_ratio: float = 0.1,
        max_patches: Optional[int] = None,
        seed: int = 0,
        chunk_elements: int = 2**24,
    ) -> None:
        super().__init__()
        if not 0 < coreset_ratio <= 1:
            raise ValueError(f"coreset_ratio must be in (0, 1], got {coreset_ratio}")
        if max_patches is not None and max_patches < 1:
            raise ValueError(f"max_patches must be at least 1 or None, got {max_patches}")
        self.coreset_ratio = coreset_ratio
        self.max_patches = max_patches
        self.seed = seed
        self.chunk_elements = chunk_elements
        self.settings = {"coreset_ratio": coreset_ratio, "max_patches": max_patches}
        self.register_buffer("bank", torch.empty(0, channels))
        self.register_load_state_dict_pre_hook(_resize_bank)

    def size_for(self, patches: int) -> int:
        """Bank rows kept from ``patches`` fitted ones: ``coreset_ratio`` of them, at most ``max_patches``."""
        n = max(1, round(self.coreset_ratio * patches))
        return n if self.max_patches is None else min(n, self.max_patches)

    @torch.no_grad()
    def fit(self, patches: torch.Tensor, progress: bool = True) -> "PatchMemory":
        """The bank from normal patch features ``[N, C]``: the greedy k-center coreset of :meth:`size_for` ``(N)``
        of them (all of them when that is ``N``)."""
        if patches.ndim != 2 or patches.shape[1] != self.bank.shape[1] or len(patches) == 0:
            raise ValueError(f"fit needs patch features [N>=1, {self.bank.shape[1]}], got {list(patches.shape)}")
        n = self.size_for(len(patches))
        if n < len(patches):
            start = int(torch.randint(len(patches), (1,), generator=torch.Generator().manual_seed(self.seed)))
            patches = patches[k_center_greedy(patches, n, start=start, progress=progress).to(patches.device)]
        self.bank = patches.contiguous().to(self.bank)
        return self

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        b, c, h, w = features.shape
        if self.bank.shape[0] == 0:  # not fitted: an untrained model, as MONAI's network checks build one
            return features.new_zeros(b, 1, h, w)
        queries = features.permute(0, 2, 3, 1).reshape(b * h * w, c)  # not einops: TorchScript compiles this
        squared, _ = nearest_neighbours(queries, self.bank, self.chunk_elements)
        return squared.view(b, 1, h, w) / c


def _resize_bank(module: PatchMemory, state_dict, prefix, *args) -> None:
    """Before loading a checkpoint, give ``bank`` the stored size (it is empty until ``fit``)."""
    stored = state_dict.get(prefix + "bank")
    if stored is not None:
        module.bank = torch.empty_like(stored, device=module.bank.device)
