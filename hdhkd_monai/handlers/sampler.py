"""Data order of an iteration-based trainer, whose loader cycles inside one long epoch: a new shuffle each pass,
and (single process) an order that a resumed run can take up exactly where the interrupted one stopped.

May import ``engines``, ``handlers``, ``baselines``, ``networks``, ``data`` and the layers below; never the
launcher, ``zoo`` or ``demo``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized

import torch
from ignite.engine import Engine, Events
from torch.utils.data import DataLoader, Sampler
from torch.utils.data.distributed import DistributedSampler

__all__ = ["ReshuffleOnRestart", "SeededShuffle"]


class SeededShuffle(Sampler[int]):
    """A random order of ``data_source``'s indices for each pass over it, pass ``p`` drawn from ``seed + p`` with its
    own generator: the data order is a function of the iteration alone, whatever else uses the random state.

    :meth:`set_position` makes the next pass pass ``p`` starting at its ``start``-th index, which is how
    :class:`~hdhkd_monai.handlers.ResumeFromCheckpoint` continues a killed run with the batches the uninterrupted
    run would have seen.
    """

    def __init__(self, data_source: Sized, seed: int = 0) -> None:
        self.size = len(data_source)
        self.seed = seed
        self.pass_index = 0
        self.start = 0

    def __len__(self) -> int:
        return self.size

    def set_position(self, pass_index: int, start: int) -> None:
        self.pass_index, self.start = pass_index, start

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.pass_index))
        start, self.start = self.start, 0
        self.pass_index += 1
        return iter(order[start:].tolist())


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
