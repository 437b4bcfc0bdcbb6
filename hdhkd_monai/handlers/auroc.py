"""Image AUROC of an evaluator's scores, as an Ignite metric computed on this process's images.

May import ``engines``, ``handlers``, ``baselines``, ``networks``, ``data`` and the layers below; never the
launcher, ``zoo`` or ``demo``.
"""

from __future__ import annotations

import numpy as np
from ignite.metrics import Metric

from hdhkd_monai import metrics

__all__ = ["ImageAUROC"]


class ImageAUROC(Metric):
    """Image-level AUROC (:func:`hdhkd_monai.metrics.auroc`, scikit-learn) over one evaluator run.

    Unlike MONAI's ``ROCAUC`` it never gathers across processes: under DDP the bundle validates on rank 0 alone,
    where a gathering metric would wait forever for the other ranks. NaN when the run saw only one class.

    Args:
        output_transform: maps the engine output to ``(scores, labels)``, e.g. ``from_engine(["score", "label"])``.
    """

    def reset(self) -> None:
        self._scores: list[float] = []
        self._labels: list[int] = []

    def update(self, output) -> None:
        scores, labels = output
        self._scores += np.atleast_1d(np.asarray(scores, dtype=float)).tolist()
        self._labels += np.atleast_1d(np.asarray(labels, dtype=int)).tolist()

    def compute(self) -> float:
        return metrics.auroc(self._labels, self._scores)
