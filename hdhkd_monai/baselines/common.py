"""Pieces the baselines share: input checks, batch iteration, frozen sub-networks and map smoothing.

``check_images`` and ``smooth_map`` run inside the detectors' inference path, so TorchScript compiles them and ONNX
export traces them (the bundle's ``ckpt_export``, ``onnx_export`` and the Model Zoo package).

May import ``baselines``, ``networks`` and the layers below; never ``engines`` or ``handlers``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import List

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ImageNormalize", "check_images", "freeze", "gaussian_kernel", "iterate_batches", "smooth_map"]


def check_images(x: torch.Tensor, name: str = "input") -> torch.Tensor:
    """Raise a ``ValueError`` unless ``x`` is a float batch [B, 3, H, W] with B >= 1; returns ``x``."""
    if not torch.jit.is_scripting() and not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [B, 3, H, W], got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != 3 or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape [B>=1, 3, H, W] (images in [0, 1]), got {list(x.shape)}")
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


def gaussian_kernel(radius: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    """The normalised 2-D Gaussian ``[1, 1, 2 radius + 1, 2 radius + 1]`` with standard deviation ``sigma`` (in
    pixels), of ``like``'s dtype and device: torchvision's ``gaussian_blur`` kernel, computed by the same operations."""
    offsets = torch.arange(-radius, radius + 1, dtype=like.dtype, device=like.device)
    pdf = torch.exp(-0.5 * (offsets / sigma).pow(2))
    kernel = pdf / pdf.sum()
    return torch.mm(kernel[:, None], kernel[None, :])[None, None]


def smooth_map(scores: torch.Tensor, size: List[int], sigma: float = 4.0) -> torch.Tensor:
    """Bilinear upsampling to ``size`` followed by a Gaussian blur, as PatchCore and RD4AD post-process their maps.

    Args:
        scores: [B, 1, h, w] patch-level anomaly scores.
        size: output (H, W).
        sigma: Gaussian standard deviation in output pixels; 0 disables the blur. The kernel is truncated at 4 sigma
            (as scipy's ``gaussian_filter``) and at the image size (reflect padding needs it smaller).

    Returns:
        [B, 1, H, W] anomaly map, equal to torchvision's ``gaussian_blur`` with reflect padding (the same kernel
        and convolution). Written out because ``gaussian_blur`` neither compiles with TorchScript nor exports to
        ONNX, and MONAI's ``GaussianFilter`` pads with zeros, which changes the map near the border.
    """
    maps = F.interpolate(scores, size=size, mode="bilinear", align_corners=False)
    radius = min(int(math.ceil(4 * sigma)), min(size[0], size[1]) - 1)
    if sigma <= 0 or radius < 1:
        return maps
    padded = F.pad(maps, [radius, radius, radius, radius], mode="reflect")
    return F.conv2d(padded, gaussian_kernel(radius, sigma, maps))
