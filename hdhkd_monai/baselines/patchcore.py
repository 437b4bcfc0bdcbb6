"""PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022).

Locally aware patch features of a frozen pretrained CNN (the teacher, a :class:`hdhkd_monai.networks.PretrainedTeacher`:
3x3 neighbourhood average of two layers, channel pooling) from all normal training images form a memory bank, thinned by
greedy k-center coreset selection on the features themselves (optionally on a random projection of them: faster, but
on brainmri a projection to 128 dimensions cost 0.2-5.0 AUROC points; docs/results.md, issue 21). A test patch scores
its distance to the nearest bank entry; the image score is the largest patch score (optionally reweighted as in the
paper's eq. 7); the map is the patch scores upsampled to the image and Gaussian-blurred (sigma 4). The bundle fits
it with ``configs/patchcore.json``: ``FitTrainer`` hands it the training batches (:meth:`PatchCore.partial_fit`).

May import ``anomaly_map``, ``networks`` (its teacher) and ``baselines.common``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from typing import Optional, Tuple

import torch
from einops import rearrange
from torch import nn
from tqdm.auto import tqdm

from hdhkd_monai.anomaly_map import AnomalyPrediction
from hdhkd_monai.baselines.common import check_images, freeze, iterate_batches, smooth_map
from hdhkd_monai.networks import Detector, teacher_settings
from hdhkd_monai.networks.blocks.patch_memory import k_center_greedy, nearest_neighbours

__all__ = ["PatchCore", "k_center_greedy", "random_projection"]


def random_projection(points: torch.Tensor, dim: int, seed: int = 0) -> torch.Tensor:
    """Johnson-Lindenstrauss projection [N, C] -> [N, dim] with a seeded Gaussian matrix (identity if C <= dim)."""
    if points.shape[1] <= dim:
        return points
    generator = torch.Generator().manual_seed(seed)
    matrix = torch.randn(points.shape[1], dim, generator=generator) / math.sqrt(dim)
    return points @ matrix.to(points)


class PatchCore(Detector):
    """PatchCore anomaly detector: memory bank of normal patch features, nearest-neighbour scoring.

    Args:
        teacher: the frozen feature extractor, one of :data:`hdhkd_monai.networks.TEACHERS` (the features it gives
            before its own normalisation are the patch features): :class:`~hdhkd_monai.networks.PretrainedTeacher`
            is PatchCore's locally aware features of two layers of a pretrained CNN (the paper:
            ``PretrainedTeacher("wide_resnet50_2", ..., out_channels=1024)``; offline with real weights:
            ``PretrainedTeacher("tf_efficientnet_lite0", "efficientnet-lite")``), the bundle's ``teacher``. Its type
            and arguments are recorded in ``settings``, from which ``inference.json`` rebuilds it.
        coreset_ratio: fraction of the patches kept in the memory bank (1 keeps all).
        projection_dim: dimension of a random projection used only for coreset selection; ``None`` (default)
            selects on the features themselves (the exact k-center greedy: slower by C / projection_dim, better).
        reweight: apply the paper's image-score reweighting (eq. 7) with ``num_neighbors`` bank neighbours.
        num_neighbors: neighbourhood size b of the reweighting.
        sigma: Gaussian blur of the anomaly map, in image pixels.
        seed: seed of the projection and of the coreset's first point.
        chunk_elements: bound on the elements of each query-by-bank distance matrix (memory).
        image_size: the input side it is fitted at, recorded in ``settings`` (inference builds the model and its
            preprocessing from them); ``None`` records none.

    The memory bank is the buffer ``memory_bank`` [M, teacher.out_channels]; it travels with ``state_dict``.
    """

    frozen_parts = ("teacher",)

    def __init__(
        self,
        teacher: nn.Module,
        coreset_ratio: float = 0.1,
        projection_dim: int | None = None,
        reweight: bool = False,
        num_neighbors: int = 9,
        sigma: float = 4.0,
        seed: int = 0,
        chunk_elements: int = 2**24,
        image_size: int | None = None,
    ) -> None:
        super().__init__()
        # what changes a fitted model's outputs; the coreset's ratio, projection and seed only choose the bank
        self.settings = {"teacher": teacher_settings(teacher), "reweight": reweight, "num_neighbors": num_neighbors,
                         "sigma": sigma, "image_size": image_size}
        if not 0 < coreset_ratio <= 1:
            raise ValueError(f"coreset_ratio must be in (0, 1], got {coreset_ratio}")
        self.teacher = freeze(teacher)
        self.coreset_ratio = coreset_ratio
        self.projection_dim = projection_dim
        self.reweight = reweight
        self.num_neighbors = num_neighbors
        self.sigma = sigma
        self.seed = seed
        self.chunk_elements = chunk_elements
        self.register_buffer("memory_bank", torch.empty(0, teacher.out_channels))
        self._patches: list[torch.Tensor] = []  # partial_fit's patch features, until finish_fit
        self.register_load_state_dict_pre_hook(_resize_memory_bank)

    def fit(self, images: torch.Tensor | Iterable) -> PatchCore:
        """Build the memory bank from normal images: :meth:`partial_fit` of each batch, then :meth:`finish_fit`.

        Args:
            images: a batch [B, 3, H, W] in [0, 1], or an iterable of such batches (or of dicts with key "image",
                e.g. a MONAI DataLoader).

        Returns:
            self, with ``memory_bank`` [M, out_channels], M = max(1, round(coreset_ratio * patches)).
        """
        for x in tqdm(iterate_batches(images), desc="PatchCore: features", unit="batch"):
            self.partial_fit(x)
        return self.finish_fit()

    @torch.no_grad()
    def partial_fit(self, x: torch.Tensor) -> None:
        """Keep the patch features of normal images ``x`` [B, 3, H, W] for :meth:`finish_fit`."""
        self._patches.append(rearrange(self.teacher(x.to(self.memory_bank.device)), "b c h w -> (b h w) c"))

    def finish_fit(self) -> PatchCore:
        """The memory bank from the patch features kept by :meth:`partial_fit` (:meth:`fit_bank`); returns self."""
        if not self._patches:
            raise ValueError("PatchCore.fit received no images: the image iterable or data loader is empty")
        patches, self._patches = torch.cat(self._patches), []
        return self.fit_bank(patches)

    @torch.no_grad()
    def fit_bank(self, patches: torch.Tensor) -> PatchCore:
        """The memory bank from normal patch features [N, C]: the greedy coreset of ``coreset_ratio * N`` of them.

        Returns:
            self, with ``memory_bank`` [M, C], M = max(1, round(coreset_ratio * N)).
        """
        n = max(1, round(self.coreset_ratio * len(patches)))
        if n < len(patches):
            start = int(torch.randint(len(patches), (1,), generator=torch.Generator().manual_seed(self.seed)))
            space = patches if self.projection_dim is None else random_projection(patches, self.projection_dim, self.seed)
            patches = patches[k_center_greedy(space, n, start=start, progress=True).to(patches.device)]
        self.memory_bank = patches.contiguous()
        return self

    def nearest(self, queries: torch.Tensor, bank: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Euclidean nearest bank entry of each query, in chunks: [P, C] -> (distances [P], bank indices [P])."""
        bank = self.memory_bank if bank is None else bank
        return nearest_neighbours(queries, bank, self.chunk_elements, euclidean=True)

    def patch_scores(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, 1, h, w]: distance of each patch feature to its nearest memory bank entry."""
        return self._score(x)[1]

    def anomaly_map(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, 1, H, W]: patch scores upsampled and Gaussian-blurred."""
        return smooth_map(self.patch_scores(x), x.shape[-2:], self.sigma)

    def predict(self, x: torch.Tensor) -> AnomalyPrediction:
        """[B, 3, H, W] -> image scores [B] and anomaly maps [B, 1, H, W].

        The image score is the largest patch score, times the weight ``1 - softmax`` of eq. 7 when ``reweight`` is
        set: with m* the bank entry nearest to the worst test patch, the weight compares that patch's distance to
        m* with its distances to m*'s ``num_neighbors`` nearest bank entries (m* first).
        """
        features, scores, index = self._score(x)
        patch_scores = scores.flatten(1)
        reweight = self.reweight and self.memory_bank.shape[0] > 0
        image_scores = self.reweighted(features, patch_scores, index) if reweight else patch_scores.amax(dim=1)
        return AnomalyPrediction(image_scores, smooth_map(scores, x.shape[-2:], self.sigma))

    def reweighted(self, features: torch.Tensor, scores: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Image scores of eq. 7 from patch features [B, P, C], patch scores [B, P] and nearest bank indices [B, P]:
        the largest patch score times ``1 - softmax`` of the worst patch's distances to m* and m*'s nearest bank
        entries (m* the bank entry nearest to that patch)."""
        rows = torch.arange(len(scores))
        image_scores, worst = scores.max(dim=1)
        worst_patch = features[rows, worst]  # [B, C]
        nearest_entry = self.memory_bank[index[rows, worst]]  # [B, C]
        k = min(self.num_neighbors, len(self.memory_bank))
        support = torch.cdist(nearest_entry, self.memory_bank).topk(k, largest=False).indices  # [B, k]
        dist = torch.linalg.vector_norm(worst_patch[:, None] - self.memory_bank[support], dim=-1)  # [B, k]
        return (1 - torch.softmax(dist, dim=1)[:, 0]) * image_scores

    def _score(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[B, 3, H, W] -> (patch features [B, h*w, C], scores [B, 1, h, w], nearest bank indices [B, h*w]), without
        gradients. An empty memory bank (an unfitted model, as MONAI's network checks and the Model Zoo's CI build
        one) scores every patch 0, with a warning."""
        check_images(x)
        with torch.no_grad():
            features = self.teacher(x)
            b, _, h, w = features.shape
            features = features.flatten(2).transpose(1, 2)  # [B, h*w, C]; not einops: TorchScript compiles this
            if self.memory_bank.shape[0] == 0:
                warnings.warn("PatchCore has an empty memory bank: every patch scores 0; call fit(normal_images) first")
                return features, features.new_zeros(b, 1, h, w), torch.zeros_like(features[..., 0], dtype=torch.long)
            dist, index = self.nearest(features.flatten(0, 1))
            return features, dist.view(b, 1, h, w), index.view(b, h * w)


def _resize_memory_bank(module: PatchCore, state_dict, prefix, *args) -> None:
    """Before loading a checkpoint, give ``memory_bank`` the stored size (it is empty until ``fit``)."""
    stored = state_dict.get(prefix + "memory_bank")
    if stored is not None:
        module.memory_bank = torch.empty_like(stored, device=module.memory_bank.device)
