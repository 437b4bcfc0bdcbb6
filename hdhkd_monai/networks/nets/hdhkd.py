"""HDHKD: a frozen teacher with the dual-decoder student, as a :class:`~.detector.Detector`, and
:class:`AnomalyMapNet`, the single-tensor face of any detector for MONAI's export and in/out checks.

May import ``networks.blocks``, ``networks.layers``, ``anomaly_map`` and ``state_dict``."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ...anomaly_map import (
    DISCREPANCIES,
    AnomalyPrediction,
    cosine_discrepancy,
    image_score,
    map_quantiles,
    squared_discrepancy,
    upsample_map,
)
from ..blocks.decoders import ConvUpsample, MambaUpNet, UpsampleStem
from ..blocks.mixers import GLOBAL_DECODERS
from ..blocks.mfm import ConcatFusion, MultiFeatureModel
from ..blocks.patch_memory import PatchMemory
from ..blocks.student_encoder import ENCODER_STRIDE, StudentEncoder
from ..layers.simple import plain_tensor
from .detector import Detector, normal_images
from .pdn import PDN
from .teachers import teacher_settings

__all__ = ["HDHKDStudent", "HDHKD", "AnomalyMapNet"]

#: Student arguments that do not change a trained model's output (initialisation, regularisation, scan kernel).
_NOT_MEANING = ("out_channels", "backbone_weights", "dropout", "scan_backend")


class HDHKDStudent(nn.Module):
    """The student: encoder (eq. 2), Conv Upsample and global decoder branches (eq. 3, Algorithm 1), fusion (eq. 4).

    Args:
        out_channels: channels ``C`` of ``f_sd``, the teacher's output channels.
        backbone: student encoder, a timm ResNet-family name (Table VI: ``"resnet18"``, ``"resnet34"``,
            ``"resnet50"``, ``"resnext50_32x4d"``, ``"wide_resnet50_2"``); trained from scratch.
        backbone_weights: optional local state_dict file to initialise the student backbone from.
        conv_upsample: keep the Conv Upsample branch output f_local (Table V). Its stem U1 is always built, since the
            global decoder reads from it.
        global_decoder: the branch beside Conv Upsample: ``"mamba"`` (Mamba UpNet, the paper), ``"transformer"``,
            ``"fcn"``, ``"conv"`` (Table VII swaps: the UpNet with self-attention, spatial dense layers or 3x3 convs as
            token mixer), or ``None`` (Table V, no Mamba UpNet).
        ss2d: with ``False`` the Mamba UpNet uses a depthwise 3x3 convolution instead of SS2D (Table V).
        mfm: fuse the branches with the Multi-Feature Model (eq. 4); otherwise a 1x1 conv over their concatenation,
            or the single branch as is (Table V).
        num_modules: modules in the global decoder (N_mamba).
        fusion_channels: channels of each fused encoder block output S~_i.
        encoder_channels: channels of f_se.
        decoder_channels: channels of U1; the global decoder runs at half of it (SS2D ``d_model`` 96, ``d_inner`` 192
            by default).
        d_state: SS2D state size N.
        dropout: dropout of the global decoder modules (0.2 in the paper).
        image_size: ``H`` (or ``(H, W)``) the model runs at; needed only by ``global_decoder="fcn"``.
        scan_backend: selective-scan backend of SS2D (``"auto"``, ``"torch"``, ``"reference"``).
        act, norm: activation and norm of the student's convolution blocks (MONAI names).

    forward: ``(x [B, 3, H, W], out_size [h, w]) -> f_sd [B, C, h, w]``.
    """

    def __init__(
        self,
        out_channels: int,
        backbone: str = "resnet18",
        backbone_weights: str | Path | None = None,
        conv_upsample: bool = True,
        global_decoder: Optional[str] = "mamba",
        ss2d: bool = True,
        mfm: bool = True,
        num_modules: int = 4,
        fusion_channels: int = 256,
        encoder_channels: int = 512,
        decoder_channels: int = 192,
        d_state: int = 16,
        dropout: float = 0.2,
        image_size: Optional[Sequence[int] | int] = None,
        scan_backend: str = "auto",
        act: str | tuple = "relu",
        norm: str | tuple = "batch",
    ):
        super().__init__()
        if global_decoder is not None and global_decoder not in GLOBAL_DECODERS:
            raise ValueError(f"global_decoder must be one of {tuple(GLOBAL_DECODERS)} or None, got {global_decoder!r}")
        if not conv_upsample and global_decoder is None:
            raise ValueError("at least one decoder branch is needed: conv_upsample=True or a global_decoder")
        if not ss2d and global_decoder != "mamba":
            raise ValueError("ss2d=False ablates the SS2D of the Mamba UpNet; it needs global_decoder='mamba'")
        self.encoder = StudentEncoder(backbone, backbone_weights, fusion_channels, encoder_channels, act=act, norm=norm)
        self.stem = UpsampleStem(encoder_channels, decoder_channels, act=act, norm=norm)
        self.local_branch = ConvUpsample(decoder_channels, out_channels) if conv_upsample else None
        self.global_branch = None
        if global_decoder is not None:
            grid = None
            if image_size is not None:
                size = [image_size, image_size] if isinstance(image_size, int) else list(image_size)
                grid = [s // 4 for s in size]  # the decoders' stride-4 grid
            mixer = GLOBAL_DECODERS[global_decoder] if ss2d else "dwconv"
            self.global_branch = MambaUpNet(
                decoder_channels, out_channels, num_modules, mixer, d_state, dropout, grid, scan_backend, act, norm
            )
        n = int(conv_upsample) + int(global_decoder is not None)
        if mfm:
            self.fusion = MultiFeatureModel(n, out_channels, out_channels, act=act, norm=norm)
        else:
            self.fusion = ConcatFusion(n, out_channels, out_channels) if n > 1 else None

    def forward(self, x: torch.Tensor, out_size: List[int]) -> torch.Tensor:
        u1 = self.stem(self.encoder(x))
        feats: List[torch.Tensor] = []
        if self.local_branch is not None:
            feats.append(self.local_branch(u1, out_size))
        if self.global_branch is not None:
            feats.append(self.global_branch(u1, out_size))
        if self.fusion is None:
            return feats[0]
        return self.fusion(feats)


class HDHKD(Detector):
    """Hybrid Dual-Heterogeneous Knowledge Distillation network: a frozen teacher and a trainable student.

    Args:
        teacher: the frozen teacher, with its feature statistics set: a :class:`PretrainedTeacher` (the bundle's
            default) or the paper's distilled :class:`PDN`; it is frozen here (``requires_grad=False``) and stays in
            eval mode under ``.train()``.
        score_top_k: the image score is the mean of the map's ``score_top_k`` largest pixels, or its maximum with
            ``None``.
        memory: a :class:`~hdhkd_monai.networks.blocks.PatchMemory` of the teacher's normalised features on the
            normal training images (fitted by :class:`~hdhkd_monai.handlers.FitPatchMemory`), or ``None``. With one,
            each map cell adds ``memory_weight`` times the squared distance of the teacher's feature to its nearest
            remembered normal feature (per channel) to the teacher-student discrepancy: a cell is anomalous when the
            student cannot predict the teacher there or no normal training patch looks like it.
        discrepancy: how a map cell compares the two features: ``"squared"``, the channel mean of ``(f_t - f_sd)**2``
            (the paper's), or ``"cosine"``, ``1 - cos(f_t, f_sd)`` (RD4AD's; blind to the features' length, which
            the memory's distance sees). Training is the same for both.
        student_args: the arguments of :class:`HDHKDStudent` after ``out_channels`` (``backbone``, ``conv_upsample``,
            ``global_decoder``, ... as keywords), documented there; the student's output channels are the teacher's.

    forward: ``x [B, 3, H, W]`` (a tensor or MONAI ``MetaTensor``) in ``[0, 1]`` with ``H``, ``W`` multiples of 16.
    In training mode it returns :meth:`features`, ``(f_t, f_sd)``; in eval mode the
    :class:`~hdhkd_monai.anomaly_map.AnomalyPrediction` of every :class:`~.detector.Detector`.

    ``settings`` (checked when a checkpoint loads) are the teacher's type and arguments, the score's top-k and the
    student's arguments that change the output. The buffer ``memory_weight`` ``[]`` travels with the state dict: 1
    with the squared discrepancy (the memory's distance is in its units); with the cosine, fitted by
    :meth:`fit_on_validation` so that both terms spread alike on normal validation images.
    """

    # bundle 0.5.0: models made before the memory and the teacher's normalisation option had neither
    # bundle 0.7.0: models made before the cosine option had the squared discrepancy
    later_settings = {
        "memory": (None, {}),
        "teacher.normalization": ("backbone", {"teacher.type": "PretrainedTeacher"}),
        "discrepancy": ("squared", {}),
    }
    # bundle 0.7.0: models made before the memory's weight added it at weight 1
    later_buffers = {"memory_weight": 1.0}

    frozen_parts = ("teacher",)

    def __init__(self, teacher: PDN, score_top_k: Optional[int] = None, memory: Optional[PatchMemory] = None,
                 discrepancy: str = "squared", **student_args):
        super().__init__()
        if discrepancy not in DISCREPANCIES:
            raise ValueError(f"discrepancy {discrepancy!r}: choose one of {', '.join(DISCREPANCIES)}")
        self.discrepancy = discrepancy
        self.teacher = teacher.requires_grad_(False).eval()
        self.student = HDHKDStudent(teacher.out_channels, **student_args)
        self.score_top_k = score_top_k
        self.memory = memory
        self.settings = {
            **_meaning_settings(student_args),
            "score_top_k": score_top_k,
            "memory": None if memory is None else memory.settings,
            "discrepancy": discrepancy,
            "teacher": teacher_settings(teacher),
        }
        self.border = teacher.border
        self.input_multiple = ENCODER_STRIDE
        self.register_buffer("memory_weight", torch.tensor(1.0))

    def teacher_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised teacher features ``[B, C, h, w]``, computed without grad."""
        with torch.no_grad():
            return self.teacher.normalize(self.teacher(x))

    def features(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(f_t, f_sd)``, both ``[B, C, h, w]`` on the teacher grid; ``f_t`` is the normalised teacher output."""
        x = plain_tensor(x)
        k = self.input_multiple
        bad = x.dim() != 4 or x.shape[1] != 3 or x.shape[2] % k != 0 or x.shape[3] % k != 0
        if not torch.jit.is_tracing() and bad:  # a trace would freeze the check as a constant (and warn)
            raise ValueError(f"HDHKD expects images [B, 3, H, W] with H and W multiples of {k}, got {list(x.shape)}")
        f_t = self.teacher_features(x)
        return f_t, self.student(x, f_t.shape[-2:])

    def training_outputs(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """:meth:`features`, which :class:`~hdhkd_monai.losses.DistillationLoss` compares."""
        return self.features(x)

    def anomaly_map(self, x: torch.Tensor) -> torch.Tensor:
        """Raw anomaly map ``[B, 1, H, W]``: the ``discrepancy`` of ``f_t`` and ``f_sd`` per cell (plus the memory's
        distance of ``f_t``, when there is a memory), bilinear to the input size."""
        f_t, f_sd = self.features(x)
        cells = self.discrepancy_cells(f_t, f_sd)
        if self.memory is not None:
            cells = cells + self.memory_weight * self.memory(f_t)
        return upsample_map(cells, x.shape[-2:], self.border)

    def discrepancy_cells(self, f_t: torch.Tensor, f_sd: torch.Tensor) -> torch.Tensor:
        """The ``discrepancy`` of ``f_t`` and ``f_sd`` ``[B, C, h, w]`` per cell, ``[B, 1, h, w]``."""
        if self.discrepancy == "cosine":
            return cosine_discrepancy(f_t, f_sd)
        return squared_discrepancy(f_t, f_sd)

    @torch.no_grad()
    def fit_on_validation(self, batches: Iterable) -> None:
        """With the cosine discrepancy and a memory, ``memory_weight`` <- the spread of the discrepancy map over the
        spread of the memory's (each ``q_high - q_low`` of :data:`~hdhkd_monai.anomaly_map.MAP_QUANTILES` over the
        normal images' map pixels): the sum of the two maps then equals the sum of each normalised by its own
        quantiles, up to scale and offset (EfficientAD's combination of two maps). Nothing to fit otherwise."""
        if self.memory is None or self.discrepancy == "squared":
            return
        was_training = self.training
        self.eval()
        terms: List[List[torch.Tensor]] = [[], []]
        try:
            for x in normal_images(batches):
                x = x.to(self.memory_weight.device)
                f_t, f_sd = self.features(x)
                for term, cells in zip(terms, (self.discrepancy_cells(f_t, f_sd), self.memory(f_t))):
                    term.append(upsample_map(cells, x.shape[-2:], self.border).cpu())
        finally:
            self.train(was_training)
        if not terms[0]:
            raise ValueError("cannot weigh the memory's map: the validation data gave no normal (label 0) images")
        spread_disc, spread_memory = (float(q[1] - q[0]) for q in (map_quantiles(torch.cat(t)) for t in terms))
        if not spread_memory > 0:
            raise ValueError("cannot weigh the memory's map: its distances do not vary over the normal validation "
                             "images (are they copies of training images?)")
        self.memory_weight.fill_(spread_disc / spread_memory)

    def predict(self, x: torch.Tensor) -> AnomalyPrediction:
        """Raw maps ``[B, 1, H, W]`` and their image scores ``[B]`` (top-k mean or maximum)."""
        maps = self.anomaly_map(x)
        return AnomalyPrediction(image_score(maps, self.score_top_k), maps)


def _meaning_settings(student_args: dict) -> dict:
    """The student's arguments (defaults filled in) that change what a trained model's maps mean; the ones that only
    affect initialisation or speed (``backbone_weights``, ``dropout``, ``scan_backend``) are left out."""
    bound = inspect.signature(HDHKDStudent).bind_partial(0, **student_args)
    bound.apply_defaults()
    return {k: v for k, v in bound.arguments.items() if k not in _NOT_MEANING}


class AnomalyMapNet(nn.Module):
    """The single-tensor face of any :class:`~.detector.Detector`: ``forward(image [B, 3, H, W]) -> [B, 1, H, W]``,
    the calibrated anomaly map, which MONAI's ``verify_net_in_out``, TorchScript/ONNX export and MONAI Label expect.
    The bundle's checkpoints hold this module's state dict, so the detector's entries are prefixed ``model.``.

    Args:
        model: the detector, in eval mode for inference.
    """

    def __init__(self, model: Detector):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image).anomaly_map
