"""The one detector contract: HDHKD and every baseline are a :class:`Detector`.

May import ``anomaly_map``, ``state_dict`` (for the settings check) and ``networks.layers``; nothing above the networks
layer.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Optional, Union

import torch
from torch import nn

from ...anomaly_map import AnomalyPrediction, normalize_map
from ...state_dict import check_settings, stored_flat_settings
from ..layers.simple import plain_tensor

__all__ = ["Detector", "NORMAL_SCORE_QUANTILES", "normal_images"]

#: Length of the ``normal_score_quantiles`` buffer: the percentiles 0, 1, ..., 100.
NORMAL_SCORE_QUANTILES = 101


class Detector(nn.Module):
    """An anomaly detector as the workflows see it (after anomalib's ``InferenceBatch`` contract).

    In eval mode ``forward(x)`` takes images ``[B, 3, H, W]`` in ``[0, 1]`` and returns an
    :class:`~hdhkd_monai.anomaly_map.AnomalyPrediction`: image scores ``pred_score [B]`` and anomaly maps
    ``anomaly_map [B, 1, H, W]``, both in calibrated units once :class:`~hdhkd_monai.handlers.CalibrationHandler`
    has set ``map_quantiles``. In training mode a subclass may return what its training needs instead (HDHKD: the
    teacher and student features) from :meth:`training_outputs`. Subclasses implement :meth:`predict`, the
    uncalibrated prediction, whose code TorchScript compiles: the bundle exports every detector the same way.

    Calibration travels with the state dict: the buffers ``threshold`` ``[]`` (the decision threshold in calibrated
    units), ``map_quantiles`` ``[2]`` (the map normalisation, EfficientAD's ``0.1 * (m - q_low) / (q_high -
    q_low)``) and ``normal_score_quantiles`` ``[NORMAL_SCORE_QUANTILES]`` (percentiles of the normal validation
    scores) are NaN until calibrated; the extra state holds ``settings`` (what changes the outputs' meaning, checked
    when a checkpoint loads: a mismatch raises :class:`~hdhkd_monai.errors.SettingsMismatchError`) and
    ``calibration`` (the quantiles calibrated with).
    """

    #: Settings this detector gained after models of it were trained, with the value those models had
    #: (:func:`~hdhkd_monai.state_dict.stored_flat_settings`).
    later_settings: dict = {}
    #: Buffers this detector gained after models of it were saved, with the value those models had
    #: (:func:`~hdhkd_monai.state_dict.later_buffers`).
    later_buffers: dict = {}
    #: Submodules that stay in eval mode whatever :meth:`train` is asked: frozen pretrained parts, whose batch norm
    #: statistics must not change.
    frozen_parts: tuple = ()

    def __init__(self) -> None:
        super().__init__()
        self.settings: dict = {}
        self.calibration: Optional[dict] = None
        self.register_buffer("threshold", torch.tensor(float("nan")))
        self.register_buffer("map_quantiles", torch.full((2,), float("nan")))
        self.register_buffer("normal_score_quantiles", torch.full((NORMAL_SCORE_QUANTILES,), float("nan")))
        self.register_load_state_dict_pre_hook(_fill_later_buffers)

    def train(self, mode: bool = True) -> Detector:
        """Switch the trainable parts to ``mode``; the :attr:`frozen_parts` stay in eval mode."""
        super().train(mode)
        for name in self.frozen_parts:
            self.get_submodule(name).eval()
        return self

    def predict(self, x: torch.Tensor) -> AnomalyPrediction:
        """Uncalibrated scores ``[B]`` and maps ``[B, 1, H, W]`` of images ``x [B, 3, H, W]``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor):
        """Eval mode: the calibrated :class:`~hdhkd_monai.anomaly_map.AnomalyPrediction` of ``x``; training mode:
        :meth:`training_outputs`. TorchScript compiles the eval path only."""
        if not torch.jit.is_scripting():
            if self.training:
                return self.training_outputs(x)
        return self.to_calibrated_units(self.predict(x))

    def fit_on_validation(self, batches: Iterable) -> None:
        """Fit what the detector learns from the validation images after training and before calibration
        (:class:`~hdhkd_monai.handlers.FitOnData` calls it when each validation starts), from ``{"image": [B, 3, H,
        W], "label": [B]}`` batches; nothing by default."""

    def training_outputs(self, x: torch.Tensor):
        """What the detector's training loss compares for training images ``x [B, 3, H, W]`` (the bundle's
        ``loss(*outputs)``); a detector fitted without a loss gives its prediction."""
        return self.to_calibrated_units(self.predict(x))

    def to_calibrated_units(self, prediction: AnomalyPrediction) -> AnomalyPrediction:
        """``prediction`` in calibrated units: map and score normalised by ``map_quantiles`` once they are finite.
        The image scores are increasing functions of the map, so the affine normalisation commutes with them."""
        q = self.map_quantiles
        calibrated = torch.isfinite(q).all()  # a tensor condition, so tracing keeps both outcomes
        score = torch.where(calibrated, normalize_map(prediction.pred_score, q), prediction.pred_score)
        anomaly_map = torch.where(calibrated, normalize_map(prediction.anomaly_map, q), prediction.anomaly_map)
        return AnomalyPrediction(score, anomaly_map)

    def get_extra_state(self) -> Union[dict, torch.Tensor]:
        if torch.onnx.is_in_onnx_export():  # torch's ONNX exporter reads every state entry as a tensor
            return torch.empty(0)
        return {"settings": self.settings, "calibration": self.calibration}

    def set_extra_state(self, state: dict) -> None:
        """Loading a checkpoint: its settings must equal this detector's (else a named error lists each one)."""
        check_settings(stored_flat_settings(state["settings"], self.later_settings), self.settings)
        self.calibration = state["calibration"]


def _fill_later_buffers(module: Detector, state_dict, prefix, *args) -> None:
    """Before a state dict loads (any loader: ``load_weights``, ignite's checkpoint handlers), give each of the
    detector's ``later_buffers`` that it lacks the value the models it comes from had."""
    for name, value in module.later_buffers.items():
        state_dict.setdefault(prefix + name, torch.as_tensor(value))


def normal_images(batches: Iterable) -> Iterator[torch.Tensor]:
    """The normal (label 0) images ``[b, 3, H, W]`` of each ``{"image", "label"}`` batch, as plain tensors; a batch
    without labels is taken as normal."""
    for batch in batches:
        images = plain_tensor(batch["image"])
        if "label" in batch:
            images = images[torch.as_tensor(batch["label"]).flatten() == 0]
        if len(images):
            yield images
