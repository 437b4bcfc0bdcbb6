"""Fail before the work: what a training run can know before iteration 1, checked when the trainer starts.

Without it, a validation split without normal images was found at the first validation (400 iterations in, with no
checkpoint written), and a read-only checkpoint folder at the last iteration.

May import ``engines``, ``handlers``, ``baselines``, ``networks``, ``data`` and the layers below; never the
launcher, ``zoo`` or ``demo``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events
from torch import nn

from hdhkd_monai.data.bounds import ImageBounds
from hdhkd_monai.data.screening import screen_image
from hdhkd_monai.errors import BadInputError

__all__ = ["TrainingPreflight", "checkpoint_bytes"]

logger = logging.getLogger(__name__)
_MB = 2**20


def checkpoint_bytes(objects: Mapping[str, Any]) -> int:
    """Disk the checkpoints of ``objects`` need at most: ``model.pt`` (the weights) and ``last.pt`` (the weights and
    two Adam moments of each trainable one), each written beside the old file before it replaces it (x2)."""
    weights = trainable = 0
    for obj in objects.values():
        if isinstance(obj, nn.Module):
            weights += sum(t.numel() * t.element_size() for t in obj.state_dict().values() if hasattr(t, "numel"))
            trainable += sum(p.numel() * p.element_size() for p in obj.parameters() if p.requires_grad)
    return 2 * (weights + weights + 2 * trainable)


class TrainingPreflight:
    """Ignite handler: when the trainer starts (attach it first), before the teacher statistics, resuming and
    iteration 1, check

    - the validation split has normal (label 0) images: calibration (threshold, map quantiles) needs them;
    - ``ckpt_dir`` can be created and written;
    - its disk has room for the checkpoints (:func:`checkpoint_bytes`);
    - with ``check_images``, every training and validation image is a regular file, decodes, and is within
      ``bounds`` (in parallel threads: about one decode per image divided by the cores).

    Each failure is a :class:`~hdhkd_monai.errors.BadInputError` naming the datalist, folder or image and the fix.
    """

    def __init__(self, training: list[dict], validation: list[dict], ckpt_dir: str | Path,
                 checkpoint_objects: Mapping[str, Any], datalist: str | Path = "the datalist",
                 bounds: ImageBounds | None = None, check_images: bool = True) -> None:
        self.training, self.validation = training, validation
        self.ckpt_dir = Path(ckpt_dir)
        self.checkpoint_objects = checkpoint_objects
        self.datalist = datalist
        self.bounds = bounds or ImageBounds()
        self.check_images = check_images

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if not any(item.get("label") == 0 for item in self.validation):
            raise BadInputError(self.datalist, "the 'validation' split has no normal (label 0) images; calibration "
                                               "(threshold, map quantiles) needs held-out normal images: rebuild the "
                                               "datalist with --val-fraction above 0")
        self._check_writable()
        self._check_free_disk()
        if self.check_images:
            self._check_images()
        logger.info("preflight passed: %d training and %d validation images, %s writable", len(self.training),
                    len(self.validation), self.ckpt_dir)

    def _check_writable(self) -> None:
        try:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=self.ckpt_dir, prefix=".write-probe.")
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise BadInputError(self.ckpt_dir, f"checkpoints cannot be written here ({type(e).__name__}: "
                                               f"{e.strerror or e}); make it writable or set ckpt_dir (or "
                                               "bundle_root) to a writable folder") from e

    def _check_free_disk(self) -> None:
        need, free = checkpoint_bytes(self.checkpoint_objects), shutil.disk_usage(self.ckpt_dir).free
        if free < need:
            raise BadInputError(self.ckpt_dir, f"{free / _MB:.0f} MB free, the checkpoints need about "
                                               f"{need / _MB:.0f} MB (model.pt and last.pt, each written beside the "
                                               "old one); free some space or set ckpt_dir to another disk")

    def _check_images(self) -> None:
        paths = [item[key] for item in self.training + self.validation for key in ("image", "mask") if item.get(key)]
        with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
            for error in pool.map(self._error, paths):
                if error is not None:
                    raise error

    def _error(self, path: str) -> BadInputError | None:
        try:
            screen_image(path, self.bounds)
        except BadInputError as error:
            return error
        return None
