"""Evaluator that turns anomaly maps into image scores, for validation, evaluation and inference."""

from __future__ import annotations

import torch
from monai.data import MetaTensor
from monai.engines import SupervisedEvaluator
from ignite.engine import Events
from monai.engines.utils import IterationEvents

from hdhkd_monai.anomaly_map import AnomalyPrediction, image_score
from hdhkd_monai.networks.layers import plain_tensor
from hdhkd_monai.state_dict import check_settings

__all__ = ["AnomalyEvaluator"]


class AnomalyEvaluator(SupervisedEvaluator):
    """A :class:`monai.engines.SupervisedEvaluator` for anomaly detectors: image scores and anomaly maps.

    The network runs in eval mode without gradients on the batch's ``"image"`` and gives either an
    :class:`~hdhkd_monai.anomaly_map.AnomalyPrediction` (the baselines) or the anomaly map alone
    (``hdhkd_monai.networks.AnomalyMapNet``, which MONAI's export and shape checks want as one tensor), scored here
    with ``anomaly_map.image_score``. Each iteration's output holds ``"image"`` (as loaded, with its metadata),
    ``"pred"`` (the map, carrying the image's metadata so ``SaveImaged`` can name its file), ``"score"`` and
    ``"label"`` when the batch has one; MONAI decollates it into one entry per image.

    A model whose ``calibration`` (``HDHKD``, set by ``CalibrationHandler`` and kept in its checkpoint) was made
    with another ``top_k`` stops the run when it starts, with a ``SettingsMismatchError`` naming both values.

    Args:
        top_k: a bare map's image score is its maximum (``None``) or the mean of its ``top_k`` largest pixels.
        args, kwargs: the arguments of ``SupervisedEvaluator`` (``device``, ``val_data_loader``, ``network``, ...);
            ``prepare_batch`` and ``postprocessing`` keep their meaning only for ``postprocessing``.
    """

    def __init__(self, *args, top_k: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.top_k = top_k
        # after the handlers given (the checkpoint loader among them), so it sees the loaded model
        self.add_event_handler(Events.STARTED, self._check_calibration)

    def _check_calibration(self, engine: AnomalyEvaluator) -> None:
        """A model calibrated with another score top-k has a threshold in other units: stop, naming both values."""
        calibration = getattr(getattr(self.network, "model", self.network), "calibration", None)
        if calibration is not None:
            source = getattr(engine.state, "checkpoint", None)  # set by NamedCheckpointLoader
            what = f"the model ({source})" if source else "the model"
            check_settings({"score_top_k": calibration["score_top_k"]}, {"score_top_k": self.top_k}, what)

    def _iteration(self, engine: AnomalyEvaluator, batchdata: dict) -> dict:
        if batchdata is None or "image" not in batchdata:
            raise ValueError("each batch must be a dict with key 'image' ([B, 3, H, W] images).")
        image = batchdata["image"]
        inputs = plain_tensor(image).to(engine.state.device, non_blocking=engine.non_blocking)
        with engine.mode(engine.network), torch.autocast(
            engine.state.device.type, enabled=engine.amp, **engine.amp_kwargs
        ):
            out = engine.inferer(inputs, engine.network)
        if not isinstance(out, AnomalyPrediction):
            out = AnomalyPrediction(image_score(out, top_k=self.top_k), out)
        pred = MetaTensor(out.anomaly_map.float())
        if isinstance(image, MetaTensor):
            pred.copy_meta_from(image)
        engine.state.output = {"image": image, "pred": pred, "score": out.pred_score.float()}
        if "label" in batchdata:
            engine.state.output["label"] = batchdata["label"]
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
