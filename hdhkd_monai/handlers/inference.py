"""Inference outputs on a user's own scans: the score table, an overlay per image, and a summary at the end.

The maps themselves are written by MONAI's ``SaveImaged`` after ``Invertd`` has resampled them to the input's
original size (``inference.json``); both name their files after the input's path relative to :func:`output_root`,
so two inputs with the same file name in different folders get different outputs.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from pathlib import Path

import torch
from ignite.engine import Engine

from hdhkd_monai.data.errors import BadInputError
from hdhkd_monai.data.transforms import SliceReader
from hdhkd_monai.handlers.overlay import save_overlay
from hdhkd_monai.handlers.scores import ScoreWriter, image_path

__all__ = ["InferenceWriter", "output_root", "relative_stem"]

logger = logging.getLogger(__name__)


def relative_stem(path: str | Path, root: str | Path) -> Path:
    """``path`` relative to ``root``, without its suffix (``.nii.gz`` counted as one): the output name's base."""
    rel = Path(os.path.relpath(path, root))
    return rel.with_name(rel.name.split(".")[0]) if rel.name.endswith(".nii.gz") else rel.with_suffix("")


def output_root(items: list[dict]) -> str:
    """The deepest folder holding every item's ``"image"``: outputs mirror the inputs' paths below it.

    Raises :class:`BadInputError` when two inputs would still share an output name (``scan.png`` and ``scan.jpg``
    side by side), naming both, before any work is done.
    """
    paths = [item["image"] for item in items]
    root = os.path.commonpath([os.path.dirname(p) for p in paths])
    seen: dict[Path, str] = {}
    for path in paths:
        stem = relative_stem(path, root)
        if stem in seen:
            raise BadInputError(path, f"would write the same outputs as {seen[stem]}; rename one of them")
        seen[stem] = path
    return root


class InferenceWriter(ScoreWriter):
    """:class:`ScoreWriter` for inference, which also draws one overlay per image and logs a summary at the end.

    Per image: a row of ``output_dir/scores.csv`` and ``output_dir/overlays/<relative path>_overlay.png``, the
    original image (read again at its own size, with the reader the preprocessing uses) beside it with the anomaly
    map on top and a colour bar. The map must already be at the image's size (``Invertd`` in the postprocessing).
    The colour scale runs from 0 to twice the decision threshold (the threshold marked on the bar), the same for
    every image; an uncalibrated model gets each map's own range.

    Args:
        output_dir: folder of ``scores.csv`` and ``overlays/``.
        root: the folder the relative output names start from (:func:`output_root`).
        threshold, normal_quantiles: see :class:`ScoreWriter`.
        maps_dir: where the maps go, for the summary.
    """

    def __init__(
        self,
        output_dir: str | Path,
        root: str | Path,
        threshold: float | torch.Tensor,
        normal_quantiles: torch.Tensor | None = None,
        maps_dir: str | Path | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        super().__init__(self.output_dir / "scores.csv", threshold, normal_quantiles)
        self.root = Path(root)
        self.maps_dir = maps_dir
        self.reader = SliceReader()

    def _collect(self, engine: Engine) -> None:
        super()._collect(engine)
        threshold = self.threshold
        vmax = 2 * threshold if math.isfinite(threshold) and threshold > 0 else None
        for out in engine.state.output:
            path = image_path(out)
            image, _ = self.reader.get_data(Path(path))
            amap = out["pred"].detach().float().cpu().numpy()[0]
            if amap.shape != image.shape:
                raise ValueError(f"{path}: anomaly map {amap.shape} is not at the image's size {image.shape}")
            title = f"{Path(path).name}  score {float(out['score']):.4g}"
            target = self.output_dir / "overlays" / f"{relative_stem(path, self.root)}_overlay.png"
            save_overlay(target, image, amap, title, 0.0 if vmax else None, vmax, threshold)

    def _complete(self, engine: Engine) -> None:
        super()._complete(engine)
        flagged = Counter(row["decision"] for row in self.rows)[1]
        decided = "" if math.isnan(self.threshold) else f", {flagged} flagged abnormal (threshold {self.threshold:.4g})"
        logger.info(
            "scored %d images%s; scores: %s, maps: %s, overlays: %s",
            len(self.rows), decided, self.filename, self.maps_dir or "not written", self.output_dir / "overlays",
        )  # fmt: skip
