"""Per-image score table of an evaluation or inference run.

May import ``engines``, ``handlers``, ``baselines``, ``networks``, ``data`` and the layers below; never the
launcher, ``zoo`` or ``demo``.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events

from hdhkd_monai.metrics import abnormal

__all__ = ["ScoreWriter", "decision", "image_path"]

logger = logging.getLogger(__name__)


def decision(score: float, threshold: float) -> int:
    """1 (abnormal) when the image score reaches the calibrated threshold (:func:`~hdhkd_monai.metrics.abnormal`),
    else 0."""
    return int(abnormal(score, threshold))


def image_path(item: dict) -> str:
    """Source file of one decollated output item, from the image's MONAI metadata (``filename_or_obj``)."""
    meta = getattr(item.get("image"), "meta", {})
    return str(meta.get("filename_or_obj", ""))


class ScoreWriter:
    """Collects one row per image from an ``AnomalyEvaluator`` and writes them as a CSV when the run completes.

    Columns: ``path, slice, label, class, score, decision, normal_percentile``; ``path`` is the item's ``"source"``
    (the volume an inference slice was cut from) or else the image file, ``slice`` the item's ``"slice"`` index (empty
    for a 2-D image, whose items have none or -1); ``label``/``class`` are empty for unlabelled images (taken from the data items' ``"label"``
    and ``"class"`` keys), ``decision`` is 1 (abnormal) when the score reaches the threshold, ``normal_percentile`` the share
    (%) of the normal validation images that scored lower.

    Args:
        filename: CSV file to write (its folder is created).
        threshold: decision threshold in the units of the scores: a number, or the ``threshold`` buffer of a
            calibrated model, read when each row is written (so a checkpoint loaded as the run starts sets it).
            NaN (an uncalibrated model) leaves the decision column empty, with a warning.
        normal_quantiles: the percentiles 0..100 of the normal validation scores (``model.normal_score_quantiles``,
            read like ``threshold``), or None; NaN or None leave ``normal_percentile`` empty.
    """

    columns = ("path", "slice", "label", "class", "score", "decision", "normal_percentile")

    def __init__(
        self, filename: str | Path, threshold: float | torch.Tensor, normal_quantiles: torch.Tensor | None = None
    ) -> None:
        self.filename = Path(filename)
        self._threshold = threshold
        self._normal_quantiles = normal_quantiles
        self.rows: list[dict] = []

    @property
    def threshold(self) -> float:
        return float(self._threshold)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._complete)

    def _reset(self, engine: Engine) -> None:
        self.rows = []

    def add(self, path: str, label, cls: str, score: float, index="") -> None:
        """One image's row; ``label`` None for an unlabelled image, ``index`` the slice index of a volume's slice."""
        score, threshold = float(score), self.threshold
        self.rows.append(
            {
                "path": path,
                "slice": "" if index == "" or int(index) < 0 else int(index),
                "label": "" if label is None else int(label),
                "class": cls,
                "score": score,
                "decision": "" if math.isnan(threshold) else decision(score, threshold),
                "normal_percentile": self.normal_percentile(score),
            }
        )

    def normal_percentile(self, score: float) -> float | str:
        """Share (%) of the normal validation images scoring below ``score``; "" without calibration."""
        if self._normal_quantiles is None:
            return ""
        quantiles = np.asarray(self._normal_quantiles.detach().cpu(), dtype=float)
        if not np.isfinite(quantiles).all():
            return ""
        return round(float(np.interp(score, quantiles, np.linspace(0, 100, quantiles.size))), 1)

    def _collect(self, engine: Engine) -> None:
        for data, out in zip(engine.state.batch, engine.state.output):
            path = data.get("source") or image_path(out)
            self.add(path, data.get("label"), data.get("class", ""), out["score"], data.get("slice", ""))

    def _complete(self, engine: Engine) -> None:
        if math.isnan(self.threshold):
            logger.warning("no decision threshold (the model is not calibrated): the decision column is empty")
        self.write_csv()

    def write_csv(self) -> None:
        self.filename.parent.mkdir(parents=True, exist_ok=True)
        with open(self.filename, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(self.rows)
        logger.info("wrote %d image scores to %s", len(self.rows), self.filename)
