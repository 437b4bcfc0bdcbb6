"""The evaluation report: metrics.json, the per-image CSV, ROC/PR plots and heat-map overlays (paper Fig. 3).

May import ``engines``, ``handlers``, ``baselines``, ``networks``, ``data`` and the layers below; never the
launcher, ``zoo`` or ``demo``.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import math
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine
from matplotlib.figure import Figure  # drawn off-screen (Agg), no pyplot state and no display needed
from sklearn.metrics import precision_recall_curve, roc_curve

from hdhkd_monai import metrics
from hdhkd_monai.handlers.overlay import save_overlay
from hdhkd_monai.handlers.scores import ScoreWriter, image_path

__all__ = ["EvaluationReport"]

logger = logging.getLogger(__name__)


def _json_safe(value):
    """NaN -> None (JSON has no NaN), recursively."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


class EvaluationReport(ScoreWriter):
    """Writes the evaluation outputs of an ``AnomalyEvaluator`` run on a labelled test split into ``output_dir``.

    - ``metrics.json``: ``image`` (AUROC, AUPRC, sensitivity at 95 % specificity, the F1 of flagging every image
      as the floor any F1 must beat, and F1, ACC, SEN, SPE with the confusion counts at the stored ``threshold``),
      ``per_class`` (each abnormal class against all normal images, at the stored threshold), ``pixel_auroc``
      (when the items carry a ``"mask"``; else null);
    - ``scores.csv``: path, label, class, score, decision (see :class:`ScoreWriter`);
    - ``roc.png``, ``pr.png``: curves of all abnormal images and of each class;
    - ``heatmaps/highest_XX_*.png``, ``heatmaps/lowest_XX_*.png``: image and map overlay of the ``n_heatmaps``
      highest and lowest scoring images, one colour scale for all of them.

    Pixel AUROC uses the images with a mask (``EnsureMaskd`` gives normal images an all-0 mask and abnormal images
    without a mask file a NaN one, which is left out); it keeps those maps in memory as float16.

    Args:
        output_dir: folder for the files.
        threshold: the decision threshold from the normal validation images (``model.threshold``; see
            :class:`ScoreWriter`).
        n_heatmaps: how many highest- and lowest-scoring images get an overlay.
        scores_only: write ``scores.csv`` and the heat-maps alone, no metrics (a test set of one class).
        normal_quantiles: see :class:`ScoreWriter`.
    """

    def __init__(
        self,
        output_dir: str | Path,
        threshold: float | torch.Tensor,
        n_heatmaps: int = 4,
        scores_only: bool = False,
        normal_quantiles: torch.Tensor | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        super().__init__(self.output_dir / "scores.csv", threshold, normal_quantiles)
        self.n_heatmaps = n_heatmaps
        self.scores_only = scores_only
        self._reset(None)

    def _reset(self, engine: Engine | None) -> None:
        super()._reset(engine)
        self._highest: list = []  # min-heaps of (±score, tie-breaker, path, class, image, map)
        self._lowest: list = []
        self._pixel_maps: list[np.ndarray] = []
        self._pixel_masks: list[np.ndarray] = []
        self._counter = itertools.count()

    def _collect(self, engine: Engine) -> None:
        super()._collect(engine)
        for data, out in zip(engine.state.batch, engine.state.output):
            score = float(out["score"])
            amap = out["pred"].detach().float().cpu().numpy()[0]
            image = out["image"].detach().float().cpu().numpy()[0]
            entry = (image_path(out), data.get("class", ""), image, amap)
            for heap, key in ((self._highest, score), (self._lowest, -score)):
                item = (key, next(self._counter), *entry)
                if len(heap) < self.n_heatmaps:
                    heapq.heappush(heap, item)
                else:
                    heapq.heappushpop(heap, item)
            mask = data.get("mask")
            if mask is not None and not np.isnan(np.asarray(mask)).any():  # NaN: anomaly not delineated
                self._pixel_maps.append(amap.astype(np.float16))
                self._pixel_masks.append(np.asarray(mask)[0] > 0)

    def _complete(self, engine: Engine) -> None:
        super()._complete(engine)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._plot_heatmaps()
        if self.scores_only:
            logger.info("scores only (scores_only=true): no metrics computed; scores and heat-maps in %s",
                        self.output_dir)
            return
        report = self.compute_metrics()
        with open(self.output_dir / "metrics.json", "w") as f:
            json.dump(_json_safe(report), f, indent=2)
        self._plot_curves()
        image = report["image"]
        logger.info(
            "test AUROC %.4f AUPRC %.4f F1 %.4f ACC %.4f SEN %.4f SPE %.4f (threshold %.4g); report in %s",
            *(image[k] for k in ("auroc", "auprc", "f1", "acc", "sen", "spe", "threshold")),
            self.output_dir,
        )

    def _columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if any(row["label"] == "" for row in self.rows):
            raise ValueError("evaluation needs a label (0 normal / 1 abnormal) for every test image.")
        labels = np.array([row["label"] for row in self.rows], dtype=int)
        scores = np.array([row["score"] for row in self.rows], dtype=float)
        classes = np.array([row["class"] or ("NORMAL" if row["label"] == 0 else "ABNORMAL") for row in self.rows])
        return labels, scores, classes

    def compute_metrics(self) -> dict:
        """The content of ``metrics.json`` (with NaN where a metric is undefined)."""
        labels, scores, classes = self._columns()
        report = {
            "n_images": int(labels.size),
            "threshold_source": "the model's calibration: quantile of the normal validation image scores",
            "image": metrics.image_metrics(labels, scores, self.threshold),
            "per_class": metrics.per_class_metrics(labels, scores, classes, self.threshold),
            "pixel_auroc": None,
        }
        if self._pixel_maps:
            report["pixel_auroc"] = metrics.auroc(
                np.concatenate([m.ravel() for m in self._pixel_masks]),
                np.concatenate([m.ravel() for m in self._pixel_maps]).astype(np.float32),
            )
        return report

    def _plot_curves(self) -> None:
        labels, scores, classes = self._columns()
        if not 0 < labels.sum() < labels.size:
            logger.warning("ROC/PR curves need normal and abnormal test images; not plotted")
            return
        abnormal_classes = sorted(set(classes[labels == 1]))
        groups = {"all abnormal": labels == 1}
        if len(abnormal_classes) > 1:
            groups.update({name: classes == name for name in abnormal_classes})
        for kind, xlabel, ylabel in (("roc", "false positive rate", "true positive rate"), ("pr", "recall", "precision")):
            fig = Figure(figsize=(5, 5))
            ax = fig.subplots()
            for group, selected in groups.items():
                keep = (labels == 0) | selected
                if kind == "roc":
                    x, y, _ = roc_curve(labels[keep], scores[keep])
                else:
                    y, x, _ = precision_recall_curve(labels[keep], scores[keep])
                ax.plot(x, y, label=group, lw=2 if group == "all abnormal" else 1)
            ax.set(xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1.02), title=kind.upper())
            ax.legend(loc="lower right" if kind == "roc" else "lower left")
            fig.savefig(self.output_dir / f"{kind}.png", dpi=100, bbox_inches="tight")

    def _plot_heatmaps(self) -> None:
        folder = self.output_dir / "heatmaps"
        folder.mkdir(exist_ok=True)
        highest = sorted(self._highest, reverse=True)
        lowest = sorted(self._lowest, reverse=True)
        shown = [m for *_, m in highest + lowest]
        if not shown:
            return
        vmin, vmax = min(float(m.min()) for m in shown), max(float(m.max()) for m in shown)
        for prefix, entries, sign in (("highest", highest, 1), ("lowest", lowest, -1)):
            for rank, (key, _, path, cls, image, amap) in enumerate(entries, start=1):
                title = f"{Path(path).name}{f' ({cls})' if cls else ''}  score {sign * key:.4g}"
                save_overlay(folder / f"{prefix}_{rank:02d}_{Path(path).stem}.png", image, amap, title, vmin, vmax)
