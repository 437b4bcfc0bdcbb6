"""Evaluator for anomaly detectors: image scores and anomaly maps, for validation, evaluation and inference.

May import ``engines``, ``handlers``, ``baselines``, ``networks``, ``data`` and the layers below; never the
launcher, ``zoo`` or ``demo``.
"""

from __future__ import annotations

import torch
from monai.data import MetaTensor
from monai.engines import SupervisedEvaluator
from monai.engines.utils import IterationEvents

from hdhkd_monai.networks.layers import plain_tensor

__all__ = ["AnomalyEvaluator"]


class AnomalyEvaluator(SupervisedEvaluator):
    """A :class:`monai.engines.SupervisedEvaluator` for any :class:`~hdhkd_monai.networks.Detector` (HDHKD or a
    baseline): the network runs in eval mode without gradients on the batch's ``"image"`` and gives an
    :class:`~hdhkd_monai.anomaly_map.AnomalyPrediction`.

    Each iteration's output holds ``"image"`` (as loaded, with its metadata), ``"pred"`` (the map, carrying the
    image's metadata so ``SaveImaged`` can name its file), ``"score"`` and ``"label"`` when the batch has one; MONAI
    decollates it into one entry per image.

    Args:
        args, kwargs: the arguments of ``SupervisedEvaluator`` (``device``, ``val_data_loader``, ``network``, ...);
            ``prepare_batch`` and ``postprocessing`` keep their meaning only for ``postprocessing``.
    """

    def _iteration(self, engine: AnomalyEvaluator, batchdata: dict) -> dict:
        if batchdata is None or "image" not in batchdata:
            raise ValueError("each batch must be a dict with key 'image' ([B, 3, H, W] images).")
        image = batchdata["image"]
        inputs = plain_tensor(image).to(engine.state.device, non_blocking=engine.non_blocking)
        with engine.mode(engine.network), torch.autocast(
            engine.state.device.type, enabled=engine.amp, **engine.amp_kwargs
        ):
            out = engine.inferer(inputs, engine.network)
        pred = MetaTensor(out.anomaly_map.float())
        if isinstance(image, MetaTensor):
            pred.copy_meta_from(image)
        engine.state.output = {"image": image, "pred": pred, "score": out.pred_score.float()}
        if "label" in batchdata:
            engine.state.output["label"] = batchdata["label"]
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
