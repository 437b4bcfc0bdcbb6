"""EfficientAD-S (Batzner, Heckler and König, "EfficientAD: Accurate Visual Anomaly Detection at Millisecond-Level
Latencies", WACV 2024).

A frozen, normalised PDN teacher (the same distilled :class:`~hdhkd_monai.networks.nets.pdn.PDN` HDHKD uses); a student
PDN with twice the teacher's channels, the first half imitating the teacher on normal images (hard-feature loss), the
second half imitating an autoencoder; the autoencoder reconstructs the teacher features through a 64-value code.
Local anomalies show as teacher-student discrepancy, logical/global ones as autoencoder-student discrepancy; both
maps are quantile-normalised on normal validation images and averaged. The bundle trains it with
``configs/efficientad.json``: :class:`EfficientADLoss` on its training-mode output.

May import ``anomaly_map``, ``losses``, ``networks`` and ``baselines.common``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import functional as TF

from hdhkd_monai.anomaly_map import AnomalyPrediction, discrepancy_map, map_quantiles, normalize_map
from hdhkd_monai.baselines.common import check_images, freeze, iterate_batches
from hdhkd_monai.losses import DistillationLoss
from hdhkd_monai.networks import PDN, Detector, teacher_settings
from hdhkd_monai.networks.nets.detector import normal_images

__all__ = ["AutoEncoder", "EfficientAD", "EfficientADLoss"]

class AutoEncoder(nn.Module):
    """EfficientAD's autoencoder: strided convolutions down to a 64-value code, then bilinear upsampling + convolutions.

    Args:
        image_size: input size (H, W) or side; each a multiple of 32. The last encoder convolution spans the whole
            H/32 x W/32 grid (8x8 at 256, as in the paper), so the code is 1x1.
        out_channels: channels of the reconstructed teacher features (384).
        dropout: dropout after the first six decoder convolutions (0.2 in the paper).

    The decoder upsamples to H/64-1, H/32, H/16-1, H/8, H/4-1, H/2-1 (3, 8, 15, 32, 63, 127 at 256), each followed
    by a 4x4 convolution with padding 2, then to the teacher's grid for two 3x3 convolutions.
    """

    def __init__(self, image_size: int | Sequence[int], out_channels: int = 384, dropout: float = 0.2) -> None:
        super().__init__()
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if any(s % 32 for s in self.image_size):
            raise ValueError(f"AutoEncoder image_size must be a multiple of 32, got {self.image_size}")
        widths = (3, 32, 32, 64, 64, 64)
        strided = []
        for c_in, c_out in zip(widths, widths[1:]):
            strided += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.ReLU(inplace=True)]
        code_kernel = tuple(s // 32 for s in self.image_size)
        self.encoder = nn.Sequential(*strided, nn.Conv2d(64, 64, code_kernel))
        self.decoder_sizes = [
            [max(1, round(s * f) + shift) for s in self.image_size]
            for f, shift in ((1 / 64, -1), (1 / 32, 0), (1 / 16, -1), (1 / 8, 0), (1 / 4, -1), (1 / 2, -1))
        ]
        self.decoder_blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(64, 64, 4, padding=2), nn.ReLU(inplace=True), nn.Dropout(dropout))
            for _ in self.decoder_sizes
        )
        self.head = nn.Sequential(
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(64, out_channels, 3, padding=1)
        )

    def forward(self, x: torch.Tensor, out_size: List[int]) -> torch.Tensor:
        """[B, 3, H, W] (the teacher's input) -> [B, out_channels, *out_size]."""
        if x.shape[-2] != self.image_size[0] or x.shape[-1] != self.image_size[1]:
            raise ValueError(f"AutoEncoder was built for {self.image_size} inputs, got {list(x.shape[-2:])}")
        z = self.encoder(x)
        for i, block in enumerate(self.decoder_blocks):
            z = block(F.interpolate(z, size=self.decoder_sizes[i], mode="bilinear", align_corners=False))
        return self.head(F.interpolate(z, size=out_size, mode="bilinear", align_corners=False))


class EfficientAD(Detector):
    """EfficientAD with a PDN student and the autoencoder; the teacher is frozen (eval mode, no gradients).

    Args:
        teacher: the distilled PDN teacher; its ``normalize`` (``feat_mean``/``feat_std`` buffers) standardises the
            targets, so set those statistics (:func:`hdhkd_monai.distill.teacher_output_stats`) before training
            (:meth:`configure_optimizer` warns otherwise). Its type and arguments are recorded in ``settings``, from
            which ``inference.json`` rebuilds it (:func:`hdhkd_monai.networks.teacher_from_settings`).
        image_size: input side or (H, W), a multiple of 32; fixes the autoencoder's code convolution.
        student_size: ``"small"`` (EfficientAD-S) or ``"medium"`` (EfficientAD-M) PDN student.
        hard_quantile: the hard-feature loss keeps student-teacher squared errors at or above this quantile.
        penalty_weight: weight of the ImageNet penalty ``mean(student(penalty_images)[:, :C]^2)``; applied only
            when :meth:`loss` receives ``penalty_images`` (none are available offline, so off by default).
        augment: colour-jitter the autoencoder branch's input during training (brightness, contrast or saturation
            factor in [0.8, 1.2], one chosen at random per batch), as the paper does.
        quantiles: (low, high) quantiles of the map normalisation, (0.9, 0.995) in the paper.

    forward: in training mode :meth:`training_outputs`, what :class:`EfficientADLoss` compares; in eval mode the
    :class:`~hdhkd_monai.anomaly_map.AnomalyPrediction` of every detector.

    Buffers ``quantiles_st`` and ``quantiles_ae`` [2] are NaN until :meth:`fit_map_normalisation`.
    """

    frozen_parts = ("teacher",)

    def __init__(
        self,
        teacher: PDN,
        image_size: int | Sequence[int],
        student_size: str = "small",
        hard_quantile: float = 0.999,
        penalty_weight: float = 1.0,
        augment: bool = True,
        quantiles: tuple[float, float] = (0.9, 0.995),
    ) -> None:
        super().__init__()
        size = [image_size] * 2 if isinstance(image_size, int) else list(image_size)
        self.settings = {"image_size": size[0] if size[0] == size[1] else size, "student_size": student_size,
                         "teacher": teacher_settings(teacher)}
        self.teacher = freeze(teacher)
        self.channels = teacher.out_channels
        self.student = PDN(size=student_size, out_channels=2 * self.channels, padding=teacher.padding)
        self.autoencoder = AutoEncoder(image_size, self.channels)
        self.hard_quantile = hard_quantile
        self.penalty_weight = penalty_weight
        self.augment = augment
        self.quantiles = quantiles
        self.register_buffer("quantiles_st", torch.full((2,), math.nan))
        self.register_buffer("quantiles_ae", torch.full((2,), math.nan))

    def configure_optimizer(self) -> torch.optim.Optimizer:
        """The EfficientAD paper's optimiser over student and autoencoder: Adam, lr 1e-4, weight decay 1e-5 (its
        tenfold lr drop at 95% of training is left to the caller). Warns when the teacher's feature statistics are
        unset (inference builds the teacher so, and loads them with the checkpoint; training needs them first)."""
        if not self.teacher.feat_mean.any() and bool((self.teacher.feat_std == 1).all()):
            warnings.warn(
                "the teacher's feature statistics are unset (feat_mean 0, feat_std 1): EfficientAD will train on raw "
                "teacher outputs; set them with hdhkd_monai.distill.teacher_output_stats first",
                UserWarning,
                stacklevel=2,
            )
        return torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=1e-4, weight_decay=1e-5)

    @property
    def calibrated(self) -> bool:
        """Whether the map normalisation quantiles have been fitted."""
        return bool(self.normalisation_fitted())

    def normalisation_fitted(self) -> torch.Tensor:
        """Whether the map normalisation quantiles have been fitted, as a tensor ``[]`` (a trace keeps both cases)."""
        return torch.isfinite(self.quantiles_st).all() & torch.isfinite(self.quantiles_ae).all()

    def features(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """[B, 3, H, W] in [0, 1] -> (teacher, student-vs-teacher, student-vs-AE, autoencoder) features.

        All four are [B, C, h, w] on the teacher grid (h = H/4 - 8 without padding); the teacher's is normalised and
        computed without gradients.
        """
        check_images(x)
        with torch.no_grad():
            target = self.teacher.normalize(self.teacher(x))
        student = self.student(x)
        reconstruction = self.autoencoder(x, target.shape[-2:])
        return target, student[:, : self.channels], student[:, self.channels :], reconstruction

    def training_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """What :class:`EfficientADLoss` compares, for normal images ``x`` [B, 3, H, W] in [0, 1]: ``(target,
        student, ae_target, ae_student, reconstruction)``, the normalised teacher features and the student's output
        on ``x``, then the same two and the autoencoder's on the copy the autoencoder branch sees (colour-jittered
        in training when ``augment`` is set, else ``x`` itself)."""
        check_images(x)
        with torch.no_grad():
            target = self.teacher.normalize(self.teacher(x))
        student, ae_target, ae_student = self.student(x), target, None
        if self.training and self.augment:  # the autoencoder branch sees a jittered copy
            x = self._jitter(x)
            with torch.no_grad():
                ae_target = self.teacher.normalize(self.teacher(x))
            ae_student = self.student(x)
        ae_student = student if ae_student is None else ae_student
        return target, student, ae_target, ae_student, self.autoencoder(x, target.shape[-2:])

    def loss(self, x: torch.Tensor, penalty_images: torch.Tensor | None = None) -> torch.Tensor:
        """Scalar training loss: :class:`EfficientADLoss` of :meth:`training_outputs` (+ penalty).

        Args:
            x: normal training images [B, 3, H, W] in [0, 1].
            penalty_images: optional [B', 3, H', W'] images unlike the training data (ImageNet in the paper) on
                which the student's teacher half is pushed towards zero output.
        """
        loss = EfficientADLoss(self.hard_quantile)(*self.training_outputs(x))
        if penalty_images is not None:
            check_images(penalty_images, "penalty_images")
            loss = loss + self.penalty_weight * self.student(penalty_images)[:, : self.channels].square().mean()
        return loss

    @torch.no_grad()
    def local_global_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 3, H, W] -> raw (student-teacher, student-autoencoder) maps, each [B, 1, h, w] on the teacher grid."""
        target, student_st, student_ae, reconstruction = self.features(x)
        grid = list(target.shape[-2:])
        return discrepancy_map(target, student_st, grid), discrepancy_map(reconstruction, student_ae, grid)

    def anomaly_map(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, 1, H, W]: mean of the local and global maps, each resized to the input (no gradients).

        Once :meth:`fit_map_normalisation` ran, each map is normalised as ``0.1 (m - q_a) / (q_b - q_a)`` (an affine
        map, so it commutes with the resize); before that the raw maps are averaged. An unpadded teacher's grid
        misses ``teacher.border`` cells on each side; the maps are edge-padded by that much before the bilinear
        resize (HDHKD does the same; the paper's code zero-pads).
        """
        with torch.no_grad():
            target, student_st, student_ae, reconstruction = self.features(x)
            size, border = x.shape[-2:], self.teacher.border
            local = discrepancy_map(target, student_st, size, border)
            global_ = discrepancy_map(reconstruction, student_ae, size, border)
            calibrated = self.normalisation_fitted()
            local = torch.where(calibrated, normalize_map(local, self.quantiles_st), local)
            global_ = torch.where(calibrated, normalize_map(global_, self.quantiles_ae), global_)
            return 0.5 * (local + global_)

    def predict(self, x: torch.Tensor) -> AnomalyPrediction:
        """[B, 3, H, W] -> image scores [B] (map maximum) and anomaly maps [B, 1, H, W]."""
        maps = self.anomaly_map(x)
        return AnomalyPrediction(maps.flatten(1).amax(dim=1), maps)

    @torch.no_grad()
    def fit_map_normalisation(self, images: torch.Tensor | Iterable) -> tuple[torch.Tensor, torch.Tensor]:
        """Fit ``quantiles_st``/``quantiles_ae`` on normal validation images (eval mode; the mode is restored).

        Args:
            images: a batch [B, 3, H, W] in [0, 1] or an iterable of batches (or dicts with key "image").

        Returns:
            (quantiles_st, quantiles_ae), each [2].
        """
        was_training = self.training
        self.eval()
        try:
            maps = [self.local_global_maps(x.to(self.quantiles_st.device)) for x in iterate_batches(images)]
        finally:
            self.train(was_training)
        if not maps:
            raise ValueError("fit_map_normalisation received no images: the iterable or data loader is empty")
        low, high = self.quantiles
        for index, buffer in enumerate((self.quantiles_st, self.quantiles_ae)):
            buffer.copy_(map_quantiles(torch.cat([m[index] for m in maps]), low=low, high=high))
        return self.quantiles_st.clone(), self.quantiles_ae.clone()

    def fit_on_validation(self, batches: Iterable) -> None:
        """:meth:`fit_map_normalisation` on the normal validation images, before each validation's calibration (a
        validation split may hold abnormal images too: the calibration skips them, and so does this)."""
        self.fit_map_normalisation(normal_images(batches))

    def _jitter(self, x: torch.Tensor) -> torch.Tensor:
        """One of brightness, contrast or saturation changed by a factor in [0.8, 1.2], for the whole batch."""
        adjust = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)[int(torch.randint(3, ()))]
        return adjust(x, float(torch.empty(()).uniform_(0.8, 1.2)))


class EfficientADLoss(nn.Module):
    """EfficientAD's training loss from :meth:`EfficientAD.training_outputs`: the hard-feature loss of the student's
    first half against the teacher, plus the autoencoder's MSE against the teacher and the student's second half's
    MSE against the autoencoder (both on the autoencoder branch's images).

    Args:
        hard_quantile: the hard-feature loss keeps squared errors at or above this quantile (0.999 in the paper).
    """

    def __init__(self, hard_quantile: float = 0.999) -> None:
        super().__init__()
        self.hard_loss = DistillationLoss(hard_quantile=hard_quantile)

    def forward(self, target, student, ae_target, ae_student, reconstruction) -> torch.Tensor:
        channels = target.shape[1]
        return (self.hard_loss(target, student[:, :channels]) + F.mse_loss(reconstruction, ae_target)
                + F.mse_loss(ae_student[:, channels:], reconstruction))
