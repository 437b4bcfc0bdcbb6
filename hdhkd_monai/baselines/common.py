"""Pieces the baselines share: input checks, batch iteration, frozen sub-networks and map smoothing.

May import ``baselines``, ``networks`` and the layers below; never ``engines`` or ``handlers``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.functional import gaussian_blur


__all__ = ["ImageNormalize", "check_images", "freeze", "iterate_batches", "smooth_map"]



def check_images(x: torch.Tensor, name: str = "input") -> torch.Tensor:
    """Raise a ``ValueError`` unless ``x`` is a float batch [B, 3, H, W] with B >= 1; returns ``x``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [B, 3, H, W], got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != 3 or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape [B>=1, 3, H, W] (images in [0, 1]), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a float tensor with values in [0, 1], got dtype {x.dtype}")
    return x


def iterate_batches(images: torch.Tensor | Iterable, name: str = "images") -> Iterator[torch.Tensor]:
    """Yield checked [B, 3, H, W] batches from a tensor (one batch) or an iterable of tensors / dicts with "image".

    A MONAI/torch ``DataLoader`` over dictionary data (key ``"image"``) can be passed directly.
    """
    if isinstance(images, torch.Tensor):
        yield check_images(images.as_tensor() if hasattr(images, "as_tensor") else images, name)
        return
    for i, batch in enumerate(images):
        if isinstance(batch, Mapping):
            if "image" not in batch:
                raise KeyError(f"{name}: batch {i} is a mapping without the key 'image' (keys: {sorted(batch)})")
            batch = batch["image"]
        if hasattr(batch, "as_tensor"):  # MONAI MetaTensor -> plain tensor: no metadata tracking in the models
            batch = batch.as_tensor()
        yield check_images(batch, f"{name}[{i}]")


def freeze(module: nn.Module) -> nn.Module:
    """Switch ``module`` to eval mode and turn off gradients of all its parameters; returns it."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


class ImageNormalize(nn.Module):
    """Per-channel ``(x - mean) / std``: maps [0, 1] images to what a pretrained backbone expects.

    Args:
        mean: three channel means.
        std: three channel standard deviations.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> [B, 3, H, W] normalised."""
        return (x - self.mean) / self.std


def smooth_map(scores: torch.Tensor, size: Sequence[int], sigma: float = 4.0) -> torch.Tensor:
    """Bilinear upsampling to ``size`` followed by a Gaussian blur, as PatchCore and RD4AD post-process their maps.

    Args:
        scores: [B, 1, h, w] patch-level anomaly scores.
        size: output (H, W).
        sigma: Gaussian standard deviation in output pixels; 0 disables the blur. The kernel is truncated at 4 sigma
            (as scipy's ``gaussian_filter``) and at the image size (reflect padding needs it smaller).

    Returns:
        [B, 1, H, W] anomaly map.
    """
    maps = F.interpolate(scores, size=tuple(size), mode="bilinear", align_corners=False)
    if sigma <= 0:
        return maps
    radius = min(math.ceil(4 * sigma), min(size) - 1)
    if radius < 1:
        return maps
    return gaussian_blur(maps, kernel_size=[2 * radius + 1] * 2, sigma=[float(sigma)] * 2)
