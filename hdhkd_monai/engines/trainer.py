"""Trainer for feature distillation: both the PDN teacher (§III-B) and the HDHKD student (§III-C) learn this way."""

from __future__ import annotations

import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents

from hdhkd_monai.networks.layers import plain_tensor

__all__ = ["DistillationTrainer"]


class DistillationTrainer(SupervisedTrainer):
    """A :class:`monai.engines.SupervisedTrainer` without labels: the network returns a (prediction, target) pair.

    The network maps the batch's ``"image"`` [B, 3, H, W] to two feature maps of equal shape, for example
    ``TeacherDistillation`` -> (PDN features, normalised PatchCore target) or ``HDHKD`` -> (teacher features,
    student features); the loss compares them (``torch.nn.MSELoss``, ``hdhkd_monai.losses.DistillationLoss``).
    Constructor arguments are those of ``SupervisedTrainer``; ``prepare_batch``, ``postprocessing`` and gradient
    accumulation are not used. Iteration-based training: pass ``max_epochs=1`` and ``epoch_length=<iterations>``;
    Ignite then restarts the data loader whenever it runs out, so the loader cycles.

    Each iteration returns ``{"loss": scalar tensor (detached)}``.
    """

    def _iteration(self, engine: DistillationTrainer, batchdata: dict) -> dict:
        if batchdata is None or "image" not in batchdata:
            raise ValueError("each batch must be a dict with key 'image' ([B, 3, H, W] images).")
        images = plain_tensor(batchdata["image"]).to(engine.state.device, non_blocking=engine.non_blocking)
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with torch.autocast(engine.state.device.type, enabled=engine.amp, **engine.amp_kwargs):
            prediction, target = engine.inferer(images, engine.network)
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            loss = engine.loss_function(prediction, target)
            engine.fire_event(IterationEvents.LOSS_COMPLETED)
        if engine.scaler is not None and engine.amp:
            engine.scaler.scale(loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            loss.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return {"loss": loss.detach()}
