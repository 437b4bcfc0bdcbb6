"""RD4AD (Deng & Li, "Anomaly Detection via Reverse Distillation from One-Class Embedding", CVPR 2022).

A frozen pretrained encoder gives features at strides 4, 8 and 16; a trainable one-class bottleneck embedding (OCBE:
multi-scale feature fusion, then a ResNet stage of residual blocks) squeezes them to stride 32; a trainable decoder
mirroring the encoder (reverse ResNet stages whose first block upsamples with a transposed convolution) restores the
three scales. Training minimises ``1 - cosine similarity`` per pixel between encoder and decoder features; the
anomaly map is its sum over the scales, upsampled and Gaussian-smoothed.

Channel counts come from the encoder's ``feature_info``, so any timm backbone with three consecutive stride-doubling
feature levels works: WideResNet-50-2 (the paper, 256/512/1024 channels) or an EfficientNet-Lite (24/40/112).
The bundle trains it with ``configs/rd4ad.json``: :class:`ReverseDistillationLoss` on its training-mode output.

May import ``anomaly_map``, ``pretrained``, ``networks`` and ``baselines.common``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from hdhkd_monai.anomaly_map import AnomalyPrediction
from hdhkd_monai.baselines.common import ImageNormalize, check_images, freeze, smooth_map
from hdhkd_monai.networks import Detector
from hdhkd_monai.pretrained import create_backbone, input_normalization

__all__ = ["RD4AD", "OneClassBottleneck", "ReverseDecoder", "ReverseDistillationLoss", "ResidualBottleneck"]


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ResidualBottleneck(nn.Module):
    """ResNet bottleneck block (1x1, 3x3, 1x1 convolutions plus a shortcut) that can halve or double the size.

    Args:
        in_channels: input channels.
        width: channels of the inner convolution.
        out_channels: output channels.
        resample: ``None`` keeps the spatial size; ``"down"`` halves it with a strided 3x3 convolution (ResNet);
            ``"up"`` doubles it with a 2x2 transposed convolution (RD4AD's decoder).
    """

    def __init__(self, in_channels: int, width: int, out_channels: int, resample: str | None = None) -> None:
        super().__init__()
        if resample == "down":
            middle = nn.Conv2d(width, width, 3, stride=2, padding=1, bias=False)
            shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=2, bias=False)
        elif resample == "up":
            middle = nn.ConvTranspose2d(width, width, 2, stride=2, bias=False)
            shortcut = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2, bias=False)
        elif resample is None:
            middle = nn.Conv2d(width, width, 3, padding=1, bias=False)
            shortcut = nn.Conv2d(in_channels, out_channels, 1, bias=False) if in_channels != out_channels else None
        else:
            raise ValueError(f"resample must be None, 'down' or 'up', got {resample!r}")
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            middle,
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut = nn.Identity() if shortcut is None else nn.Sequential(shortcut, nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, in, H, W] -> [B, out, H', W'] with H' = H, H / 2 or 2 H."""
        return F.relu(self.body(x) + self.shortcut(x))


def _stage(in_channels: int, out_channels: int, blocks: int, resample: str) -> nn.Sequential:
    """A ResNet stage: a resampling block, then ``blocks - 1`` blocks at constant size (inner width out / 2)."""
    width = out_channels // 2
    layers = [ResidualBottleneck(in_channels, width, out_channels, resample)]
    layers += [ResidualBottleneck(out_channels, width, out_channels) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class OneClassBottleneck(nn.Module):
    """OCBE: fuse three encoder scales at stride 16, then a residual stage to a compact stride-32 embedding.

    Args:
        channels: encoder channels (c1, c2, c3) at strides 4, 8, 16.
        blocks: residual blocks in the embedding stage (3, like ResNet's layer4, in the official code).

    The output has ``2 * c3`` channels (2048 for WideResNet-50-2).
    """

    def __init__(self, channels: Sequence[int], blocks: int = 3) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.align = nn.ModuleList(
            [nn.Sequential(_conv_bn_relu(c1, c2, 2), _conv_bn_relu(c2, c3, 2)), _conv_bn_relu(c2, c3, 2), nn.Identity()]
        )
        self.embed = _stage(3 * c3, 2 * c3, blocks, "down")

    def forward(self, features: List[torch.Tensor]) -> torch.Tensor:
        """[f1 [B,c1,H/4,W/4], f2 [B,c2,H/8,W/8], f3 [B,c3,H/16,W/16]] -> [B, 2*c3, H/32, W/32]."""
        fused = torch.cat([align(features[i]) for i, align in enumerate(self.align)], dim=1)
        return self.embed(fused)


class ReverseDecoder(nn.Module):
    """Decoder mirroring the encoder: three upsampling residual stages from stride 32 back to strides 16, 8, 4.

    Args:
        channels: encoder channels (c1, c2, c3) the decoder must reproduce.
        blocks: residual blocks per stage, from the deepest (c3) to the shallowest (c1); the official
            de-WideResNet-50 uses (3, 4, 6).
    """

    def __init__(self, channels: Sequence[int], blocks: Sequence[int] = (3, 4, 6)) -> None:
        super().__init__()
        c1, c2, c3 = channels
        ins, outs = (2 * c3, c3, c2), (c3, c2, c1)
        self.stages = nn.ModuleList(_stage(i, o, n, "up") for i, o, n in zip(ins, outs, blocks))

    def forward(self, embedding: torch.Tensor) -> List[torch.Tensor]:
        """[B, 2*c3, H/32, W/32] -> [d1 [B,c1,H/4,W/4], d2 [B,c2,H/8,W/8], d3 [B,c3,H/16,W/16]]."""
        outputs = []
        x = embedding
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs[::-1]


class RD4AD(Detector):
    """Reverse distillation anomaly detector.

    Args:
        backbone: timm encoder name (paper: ``"wide_resnet50_2"``; offline with real weights:
            ``"tf_efficientnet_lite0"`` with ``weights="efficientnet-lite"``).
        weights: encoder weights as in :func:`hdhkd_monai.pretrained.create_backbone` (``None`` = random, warns).
        layers: three timm feature indices at consecutive strides (ResNet ``layer1..3`` = (1, 2, 3)).
        bottleneck_blocks: residual blocks in the one-class embedding.
        decoder_blocks: residual blocks per decoder stage, deepest first.
        sigma: Gaussian smoothing of the anomaly map, in image pixels.
        image_size: the input side it is trained at, recorded in ``settings`` (inference builds the model and its
            preprocessing from them); ``None`` records none.

    forward: in training mode :meth:`features`, what :class:`ReverseDistillationLoss` compares; in eval mode the
    :class:`~hdhkd_monai.anomaly_map.AnomalyPrediction` of every detector.

    Input images are [B, 3, H, W] in [0, 1] with H, W multiples of 32; normalisation for the encoder happens inside.
    """

    frozen_parts = ("encoder",)

    def __init__(
        self,
        backbone: str = "wide_resnet50_2",
        weights: str | None = None,
        layers: Sequence[int] = (1, 2, 3),
        bottleneck_blocks: int = 3,
        decoder_blocks: Sequence[int] = (3, 4, 6),
        sigma: float = 4.0,
        image_size: int | None = None,
    ) -> None:
        super().__init__()
        self.settings = {"backbone": backbone, "layers": list(layers), "bottleneck_blocks": bottleneck_blocks,
                         "decoder_blocks": list(decoder_blocks), "sigma": sigma, "image_size": image_size}
        if len(layers) != 3 or len(decoder_blocks) != 3:
            raise ValueError(f"RD4AD needs 3 encoder layers and 3 decoder stages, got {layers} and {decoder_blocks}")
        self.normalize = ImageNormalize(*input_normalization(backbone))
        self.encoder = freeze(create_backbone(backbone, weights, out_indices=layers))
        reductions = self.encoder.feature_info.reduction()
        if any(b != 2 * a for a, b in zip(reductions, reductions[1:])):
            raise ValueError(f"{backbone} layers {tuple(layers)} have strides {reductions}; RD4AD needs each to double")
        channels = self.encoder.feature_info.channels()
        self.bottleneck = OneClassBottleneck(channels, bottleneck_blocks)
        self.decoder = ReverseDecoder(channels, decoder_blocks)
        self.stride = 2 * reductions[-1]
        self.sigma = sigma

    def configure_optimizer(self) -> torch.optim.Optimizer:
        """The RD4AD paper's optimiser over the trainable parts (bottleneck and decoder): Adam, lr 0.005,
        betas (0.5, 0.999)."""
        return torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=5e-3, betas=(0.5, 0.999))

    def features(self, x: torch.Tensor) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """[B, 3, H, W] in [0, 1] -> (encoder features, decoder features), each three maps [B, c_k, H/s_k, W/s_k]."""
        check_images(x)
        if x.shape[-2] % self.stride != 0 or x.shape[-1] % self.stride != 0:
            raise ValueError(f"RD4AD input size must be a multiple of {self.stride}, got {list(x.shape[-2:])}")
        with torch.no_grad():
            encoded = self.encoder(self.normalize(x))
        return encoded, self.decoder(self.bottleneck(encoded))

    def training_outputs(self, x: torch.Tensor) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """:meth:`features`, which :class:`ReverseDistillationLoss` compares."""
        return self.features(x)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Scalar training loss of images ``x`` (:class:`ReverseDistillationLoss` of :meth:`features`)."""
        return ReverseDistillationLoss()(*self.features(x))

    def anomaly_map(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, 1, H, W]: per-scale cosine distances upsampled, summed, Gaussian-smoothed (no
        gradients)."""
        with torch.no_grad():
            encoded, decoded = self.features(x)
            size = x.shape[-2:]
            total = torch.zeros_like(x[:, :1])
            for e, d in zip(encoded, decoded):
                total = total + F.interpolate(_cosine_distance(e, d), size=size, mode="bilinear", align_corners=False)
            return smooth_map(total, size, sigma=self.sigma)

    def predict(self, x: torch.Tensor) -> AnomalyPrediction:
        """[B, 3, H, W] -> image scores [B] (map maximum) and anomaly maps [B, 1, H, W]."""
        maps = self.anomaly_map(x)
        return AnomalyPrediction(maps.flatten(1).amax(dim=1), maps)


class ReverseDistillationLoss(nn.Module):
    """RD4AD's loss (paper eq. 2-3): the sum over scales of the mean per-pixel cosine distance between encoder and
    decoder features, each a sequence of [B, c_k, h_k, w_k] maps."""

    def forward(self, encoded: Sequence[torch.Tensor], decoded: Sequence[torch.Tensor]) -> torch.Tensor:
        return sum(_cosine_distance(e, d).mean() for e, d in zip(encoded, decoded))


def _cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] x2 -> [B, 1, h, w]: 1 - cosine similarity along channels."""
    return 1 - F.cosine_similarity(a, b, dim=1).unsqueeze(1)
