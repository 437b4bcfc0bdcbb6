"""Per-image score table of an evaluation or inference run."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import torch
from ignite.engine import Engine, Events

__all__ = ["ScoreWriter", "decision", "image_path"]

logger = logging.getLogger(__name__)


def decision(score: float, threshold: float) -> int:
    """1 (abnormal) when the image score reaches the calibrated threshold, else 0."""
    return int(score >= threshold)


def image_path(item: dict) -> str:
    """Source file of one decollated output item, from the image's MONAI metadata (``filename_or_obj``)."""
    meta = getattr(item.get("image"), "meta", {})
    return str(meta.get("filename_or_obj", ""))


class ScoreWriter:
    """Collects one row per image from an ``AnomalyEvaluator`` and writes them as a CSV when the run completes.

    Columns: ``path, label, class, score, decision``; ``label``/``class`` are empty for unlabelled images (taken from
    the data items' ``"label"`` and ``"class"`` keys), ``decision`` is 1 (abnormal) when ``score >= threshold``.

    Args:
        filename: CSV file to write (its folder is created).
        threshold: decision threshold in the units of the scores: a number, or the ``threshold`` buffer of a
            calibrated model, read when each row is written (so a checkpoint loaded as the run starts sets it).
            NaN (an uncalibrated model) leaves the decision column empty, with a warning.
    """

    columns = ("path", "label", "class", "score", "decision")

    def __init__(self, filename: str | Path, threshold: float | torch.Tensor) -> None:
        self.filename = Path(filename)
        self._threshold = threshold
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

    def add(self, path: str, label, cls: str, score: float) -> None:
        """One image's row; ``label`` None for an unlabelled image."""
        score, threshold = float(score), self.threshold
        self.rows.append(
            {
                "path": path,
                "label": "" if label is None else int(label),
                "class": cls,
                "score": score,
                "decision": "" if math.isnan(threshold) else decision(score, threshold),
            }
        )

    def _collect(self, engine: Engine) -> None:
        for data, out in zip(engine.state.batch, engine.state.output):
            self.add(image_path(out), data.get("label"), data.get("class", ""), out["score"])

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
