"""Trainers of the bundle workflows: feature distillation by gradient (the PDN teacher, §III-B; the HDHKD student,
§III-C; RD4AD and EfficientAD) and one fitting pass for detectors that learn without gradients (PatchCore).

May import ``networks.layers``; nothing above the engines layer.
"""

from __future__ import annotations

import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer, Trainer
from monai.engines.utils import IterationEvents

from hdhkd_monai.networks.layers import plain_tensor

__all__ = ["DistillationTrainer", "FitTrainer"]


class DistillationTrainer(SupervisedTrainer):
    """A :class:`monai.engines.SupervisedTrainer` without labels: in training mode the network returns the tensors its
    loss compares, and ``loss_function(*outputs)`` gives the scalar loss.

    The network maps the batch's ``"image"`` [B, 3, H, W] to a tuple, for example ``TeacherDistillation`` -> (PDN
    features, normalised PatchCore target) or ``HDHKD`` -> (teacher features, student features) with
    ``torch.nn.MSELoss`` or ``hdhkd_monai.losses.DistillationLoss``; ``RD4AD`` -> (encoder features, decoder
    features) with ``ReverseDistillationLoss``; ``EfficientAD`` -> its five outputs with ``EfficientADLoss``.
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
            outputs = engine.inferer(images, engine.network)
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            loss = engine.loss_function(*outputs)
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


class FitTrainer(Trainer):
    """The trainer of a detector that is fitted, not trained by gradient (PatchCore's memory bank), so that it runs
    the training workflow of every detector (preflight, validation with calibration, the best checkpoint).

    One pass over ``train_data_loader``: each batch's ``"image"`` goes to ``network.partial_fit(images)``, and
    ``network.finish_fit()`` runs when the pass ends, before any handler sees the network (validation at the end of
    the epoch, checkpoints). Each iteration returns ``{}`` (there is no loss).

    Args:
        device: where the batches go (the network should be there already).
        train_data_loader: the normal training images, ``{"image": [B, 3, H, W]}`` batches.
        network: the detector, with ``partial_fit`` and ``finish_fit``.
        train_handlers: Ignite handlers, as for ``SupervisedTrainer``.
        max_epochs: passes over the data; each ends in a fit of its own, so 1 (a MONAI train workflow names it).
    """

    def __init__(self, device, train_data_loader, network, train_handlers=None, max_epochs: int = 1) -> None:
        super().__init__(device=device, max_epochs=max_epochs, data_loader=train_data_loader, decollate=False)
        self.network = network
        # registered before the handlers, so an epoch-level validation sees the fitted network
        self.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: engine.network.finish_fit())
        self._register_handlers(train_handlers or [])

    def _iteration(self, engine: FitTrainer, batchdata: dict) -> dict:
        if batchdata is None or "image" not in batchdata:
            raise ValueError("each batch must be a dict with key 'image' ([B, 3, H, W] images).")
        engine.network.partial_fit(plain_tensor(batchdata["image"]).to(engine.state.device))
        return {}
