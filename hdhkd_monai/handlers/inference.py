"""Inference outputs on a user's own scans: the score table, an overlay per image, and a summary at the end.

The maps come at the input's original size (``Invertd`` in ``inference.json``'s postprocessing); every output is
named after the input's path relative to :func:`output_root`, so two inputs with the same file name in different
folders get different outputs. Volumes arrive as slices (:func:`~hdhkd_monai.data.slices.slice_inputs`) and leave as
one map in the source's geometry.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections import Counter, defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from ignite.engine import Engine
from monai.transforms import SaveImage

from hdhkd_monai.data.aggregate import volume_scores
from hdhkd_monai.errors import BadInputError
from hdhkd_monai.data.slices import map_in_source_space
from hdhkd_monai.data.transforms import SliceReader
from hdhkd_monai.handlers.overlay import save_overlay
from hdhkd_monai.handlers.scores import ScoreWriter, decision, image_path

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
    paths = [item["image"] for item in items]  # before slicing: a volume is one input
    root = os.path.commonpath([os.path.dirname(p) for p in paths])
    seen: dict[Path, str] = {}
    for path in paths:
        stem = relative_stem(path, root)
        if stem in seen:
            raise BadInputError(path, f"would write the same outputs as {seen[stem]}; rename one of them")
        seen[stem] = path
    return root


class InferenceWriter(ScoreWriter):
    """:class:`ScoreWriter` for inference, which also writes each image's map and overlay, each volume's map and
    score, and logs a summary at the end. The maps must already be at the images' size (``Invertd`` in the
    postprocessing).

    - 2-D image ``<rel>.<ext>`` (``rel`` its path relative to ``root``): ``maps_dir/<rel>_anomaly_map.<map ext>``
      through ``map_saver``, and ``output_dir/overlays/<rel>_overlay.png``: the original image (read again at its
      own size, with the reader the preprocessing uses) beside it with the map on top and a colour bar;
    - slice ``k`` of volume ``<rel>.nii.gz`` (items of :func:`~hdhkd_monai.data.slices.slice_inputs`): a row of
      ``scores.csv`` and ``overlays/<rel>/slice_<k>_overlay.png``; once the run ends, the slice maps stacked into
      ``maps_dir/<rel>_anomaly_map.nii.gz`` with the source's voxel order and affine, and a row of
      ``volumes.csv`` (volume, n_slices, score: the highest slice score, as in :mod:`~hdhkd_monai.data.aggregate`,
      decision).

    The overlays' colour scale runs from 0 to twice the decision threshold (the threshold marked on the bar), the
    same for every image; an uncalibrated model gets each map's own range.

    Args:
        output_dir: folder of ``scores.csv``, ``volumes.csv`` and ``overlays/``.
        root: the folder the relative output names start from (:func:`output_root`).
        threshold, normal_quantiles: see :class:`ScoreWriter`.
        map_saver: MONAI ``SaveImage`` for the 2-D maps (its ``output_dir`` is ``maps_dir``, ``data_root_dir`` is
            ``root``).
        maps_dir: where the maps go.
        modality: the volumes' modality, to put slice maps back into the volume's geometry.
    """

    def __init__(
        self,
        output_dir: str | Path,
        root: str | Path,
        threshold: float | torch.Tensor,
        map_saver: SaveImage,
        maps_dir: str | Path,
        normal_quantiles: torch.Tensor | None = None,
        modality: str = "oct",
    ) -> None:
        self.output_dir = Path(output_dir)
        super().__init__(self.output_dir / "scores.csv", threshold, normal_quantiles)
        self.root = Path(root)
        self.map_saver = map_saver
        self.maps_dir = Path(maps_dir)
        self.modality = modality
        self.reader = SliceReader()
        self._slices: dict[str, dict[int, tuple[np.ndarray, float]]] = defaultdict(dict)

    def _reset(self, engine: Engine) -> None:
        super()._reset(engine)
        self._slices = defaultdict(dict)

    def _collect(self, engine: Engine) -> None:
        super()._collect(engine)
        threshold = self.threshold
        vmax = 2 * threshold if math.isfinite(threshold) and threshold > 0 else None
        for data, out in zip(engine.state.batch, engine.state.output):
            path = image_path(out)
            image, _ = self.reader.get_data(Path(path))
            amap = out["pred"].detach().float().cpu().numpy()[0]
            if amap.shape != image.shape:
                raise ValueError(f"{path}: anomaly map {amap.shape} is not at the image's size {image.shape}")
            score = float(out["score"])
            source, index = data["source"], int(data["slice"])
            if index >= 0:
                self._slices[source][index] = (amap, score)
                name, title = relative_stem(source, self.root) / f"slice_{index:04d}", f"{Path(source).name} slice {index}"
            else:
                self.map_saver(out["pred"])
                name, title = relative_stem(path, self.root), Path(path).name
            flagged = "" if math.isnan(threshold) else ("  flagged abnormal" if decision(score, threshold) else "  normal")
            save_overlay(self.output_dir / "overlays" / f"{name}_overlay.png", image, amap,
                         f"{title}  score {score:.4g}{flagged}", 0.0 if vmax else None, vmax, threshold)

    def _complete(self, engine: Engine) -> None:
        super()._complete(engine)
        self._write_volumes()
        flagged = Counter(row["decision"] for row in self.rows)[1]
        decided = "" if math.isnan(self.threshold) else f", {flagged} flagged abnormal (threshold {self.threshold:.4g})"
        volumes = f" ({len(self._slices)} volumes: {self.output_dir / 'volumes.csv'})" if self._slices else ""
        logger.info(
            "scored %d images%s%s; scores: %s, maps: %s, overlays: %s",
            len(self.rows), decided, volumes, self.filename, self.maps_dir, self.output_dir / "overlays",
        )  # fmt: skip

    def _write_volumes(self) -> None:
        if not self._slices:
            return
        items = [{"volume": source} for source, found in self._slices.items() for _ in found]
        scores = [score for found in self._slices.values() for _, score in found.values()]
        rows = []
        for volume in volume_scores(items, scores):
            source, found = volume["volume"], self._slices[volume["volume"]]
            stacked = np.stack([found[k][0] for k in sorted(found)])
            array, affine = map_in_source_space(stacked, source, self.modality)
            target = self.maps_dir / f"{relative_stem(source, self.root)}_anomaly_map.nii.gz"
            target.parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(array.astype(np.float32), affine), target)
            verdict = "" if math.isnan(self.threshold) else decision(volume["score"], self.threshold)
            rows.append({"volume": source, "n_slices": volume["n_slices"], "score": volume["score"],
                         "decision": verdict})
        with open(self.output_dir / "volumes.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=("volume", "n_slices", "score", "decision"))
            writer.writeheader()
            writer.writerows(rows)
