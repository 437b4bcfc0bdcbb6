"""A new shuffle each time an iteration-based trainer restarts its distributed data loader."""

from __future__ import annotations

from ignite.engine import Engine, Events
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

__all__ = ["ReshuffleOnRestart"]


class ReshuffleOnRestart:
    """Advance the ``DistributedSampler`` epoch whenever Ignite restarts the data loader within an epoch.

    MONAI sets the sampler epoch at each engine epoch; an iteration-based run has a single long epoch in which the
    loader cycles, and without this every cycle would repeat the first permutation. Non-distributed samplers
    reshuffle by themselves, so for them this handler does nothing.
    """

    def __init__(self, dataloader: DataLoader) -> None:
        self.sampler = getattr(dataloader, "sampler", None)

    def attach(self, engine: Engine) -> None:
        if isinstance(self.sampler, DistributedSampler):
            engine.add_event_handler(Events.DATALOADER_STOP_ITERATION, self)

    def __call__(self, engine: Engine) -> None:
        self.sampler.set_epoch(self.sampler.epoch + 1)
