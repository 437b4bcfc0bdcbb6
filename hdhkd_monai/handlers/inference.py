"""Inference outputs on a user's own scans: the score table, an overlay per image, and a summary at the end.

The maps come at the input's original size (``Invertd`` in ``inference.json``'s postprocessing); every output is
named after the input's path relative to :func:`output_root`, so two inputs with the same file name in different
folders get different outputs. Volumes arrive as slices (:func:`~hdhkd_monai.data.slices.slice_inputs`) and leave as
one map in the source's geometry.

May import ``engines``, ``handlers``, ``baselines``, ``networks``, ``data`` and the layers below; never the
launcher, ``zoo`` or ``demo``.
"""

from __future__ import annotations

import csv
import logging
import math
from collections import Counter, defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from ignite.engine import Engine
from monai.transforms import SaveImage

from hdhkd_monai.data.aggregate import volume_scores
from hdhkd_monai.data.containment import confined, input_root, output_name
from hdhkd_monai.errors import BadInputError
from hdhkd_monai.data.slices import map_in_source_space
from hdhkd_monai.data.transforms import SliceReader
from hdhkd_monai.handlers.outputs import OutputSet
from hdhkd_monai.handlers.overlay import save_overlay
from hdhkd_monai.handlers.scores import ScoreWriter, decision, image_path

__all__ = ["InferenceWriter", "output_root"]

logger = logging.getLogger(__name__)


def output_root(items: list[dict]) -> str:
    """The deepest folder holding every item's ``"image"`` (lexically: ``..`` folded, symlinks not followed):
    outputs mirror the inputs' paths below it (:func:`~hdhkd_monai.data.containment.output_name`).

    Raises :class:`BadInputError` when two inputs would still share an output name (``scan.png`` and ``scan.jpg``
    side by side), naming both, before any work is done.
    """
    paths = [item["image"] for item in items]  # before slicing: a volume is one input
    root = input_root(paths)
    seen: dict[Path, str] = {}
    for path in paths:
        stem = output_name(path, root)
        if stem in seen:
            raise BadInputError(path, f"would write the same outputs as {seen[stem]}; rename one of them")
        seen[stem] = path
    return root


class InferenceWriter(ScoreWriter):
    """:class:`ScoreWriter` for inference, which also writes each image's map and overlay, each volume's map and
    score, and logs a summary at the end. The maps must already be at the images' size (``Invertd`` in the
    postprocessing).

    - 2-D image ``<rel>.<ext>`` (``rel`` its name below ``root``, :func:`~hdhkd_monai.data.containment.output_name`):
      ``maps_dir/<rel>_anomaly_map.<map ext>`` through ``map_saver``, and ``overlays/<rel>_overlay.png``: the image
      that was scored (read again at its own size, with the reader the preprocessing uses) beside it with the map on
      top and a colour bar;
    - slice ``k`` of volume ``<rel>.nii.gz`` (items of :func:`~hdhkd_monai.data.slices.slice_inputs`): a row of
      ``scores.csv`` and ``overlays/<rel>/slice_<k>_overlay.png``; once the run ends, the slice maps stacked into
      ``maps_dir/<rel>_anomaly_map.nii.gz`` with the source's voxel order and affine, and a row of
      ``volumes.csv`` (volume, n_slices, score: the highest slice score, as in :mod:`~hdhkd_monai.data.aggregate`,
      decision).

    Every file goes inside the output folder (checked after resolving symlinks). The 2-D maps are written by a
    background thread while the network scores the next batch; a batch's rows are appended to ``scores.csv``
    (:class:`~hdhkd_monai.handlers.outputs.OutputSet`) once its maps and overlays are written, so a row means its
    outputs are complete.

    The overlays' colour scale runs from 0 to twice the decision threshold (the threshold marked on the bar), the
    same for every image; an uncalibrated model gets each map's own range.

    Args:
        output: the run's :class:`~hdhkd_monai.handlers.outputs.OutputSet` (its folder holds ``scores.csv``,
            ``skipped.csv``, ``volumes.csv`` and ``overlays/``).
        root: the folder the relative output names start from (:func:`output_root`).
        threshold, normal_quantiles: see :class:`ScoreWriter`.
        map_saver: MONAI ``SaveImage`` for the 2-D maps (given each file name).
        maps_dir: where the maps go.
        modality: the volumes' modality, to put slice maps back into the volume's geometry.
        overlays: write the overlays (each costs a second read of the image and a figure).
    """

    def __init__(
        self,
        output: OutputSet,
        root: str | Path,
        threshold: float | torch.Tensor,
        map_saver: SaveImage,
        maps_dir: str | Path,
        normal_quantiles: torch.Tensor | None = None,
        modality: str = "oct",
        overlays: bool = True,
    ) -> None:
        self.output = output
        self.output_dir = output.path
        super().__init__(output.scores.path, threshold, normal_quantiles)
        self.root = Path(root)
        self.map_saver = map_saver
        self.maps_dir = Path(maps_dir)
        self.modality = modality
        self.reader = SliceReader()
        self.overlays = overlays
        self._slices: dict[str, dict[int, tuple[np.ndarray, float]]] = defaultdict(dict)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="map-writer")
        self._pending: tuple[list[Future], list[dict]] | None = None

    def _reset(self, engine: Engine) -> None:
        self.rows = list(self.output.scores.rows)  # a resumed run's earlier rows count in the summary
        self._slices = defaultdict(dict)

    def _target(self, folder: Path, name: Path, suffix: str) -> Path:
        target = confined(folder / f"{name}{suffix}", self.output_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def _collect(self, engine: Engine) -> None:
        self._flush()  # the previous batch's maps were written while the network ran: its rows can go now
        first = len(self.rows)
        super()._collect(engine)
        futures = [self._write(data, out) for data, out in zip(engine.state.batch, engine.state.output)]
        self._pending = ([f for f in futures if f is not None], self.rows[first:])

    def _write(self, data: dict, out: dict) -> Future | None:
        """One image's outputs: the overlay now, the 2-D map in the writer thread (its future returned)."""
        amap = out["pred"].detach().float().cpu().numpy()[0]
        score, threshold = float(out["score"]), self.threshold
        source, index = data["source"], int(data["slice"])
        future = None
        if index >= 0:
            self._slices[source][index] = (amap, score)
            name, title = output_name(source, self.root) / f"slice_{index:04d}", f"{Path(source).name} slice {index}"
        else:
            name, title = output_name(source, self.root), Path(source).name
            future = self._writer.submit(self._save_map, out["pred"], self._target(self.maps_dir, name, "_anomaly_map"))
        if self.overlays:
            path = image_path(out)  # the file scored: the input, a slice, or a downscaled copy
            image, _ = self.reader.get_data(Path(path))
            if amap.shape != image.shape:
                raise ValueError(f"{path}: anomaly map {amap.shape} is not at the image's size {image.shape}")
            vmax = 2 * threshold if math.isfinite(threshold) and threshold > 0 else None
            flagged = "" if math.isnan(threshold) else ("  flagged abnormal" if decision(score, threshold) else "  normal")
            save_overlay(self._target(self.output_dir / "overlays", name, "_overlay.png"), image, amap,
                         f"{title}  score {score:.4g}{flagged}", 0.0 if vmax else None, vmax, threshold)
        return future

    def _save_map(self, pred: torch.Tensor, target: Path) -> None:
        try:
            self.map_saver(pred, filename=str(target))
        except Exception as e:  # a full disk, a lost mount: name the file, whatever the writer said
            problem = " ".join(str(e).split())[:300]
            raise BadInputError(target, f"cannot be written ({type(e).__name__}: {problem}); free disk space or "
                                        "choose another output_dir, then rerun with resume true") from e

    def _flush(self) -> None:
        if self._pending is None:
            return
        futures, rows = self._pending
        self._pending = None
        for future in futures:
            future.result()
        self.output.scores.append(rows)

    def write_csv(self) -> None:
        """Nothing left to write: the rows went to ``scores.csv`` batch by batch."""

    def _complete(self, engine: Engine) -> None:
        self._flush()
        self._writer.shutdown()
        super()._complete(engine)
        self._write_volumes()
        self.output.close()
        flagged = Counter(row["decision"] for row in self.rows)[1]
        decided = "" if math.isnan(self.threshold) else f", {flagged} flagged abnormal (threshold {self.threshold:.4g})"
        volumes = f" ({len(self._slices)} volumes: {self.output_dir / 'volumes.csv'})" if self._slices else ""
        skipped = len(self.output.skipped.rows)
        skipped = f"; SKIPPED {skipped} unreadable or out-of-bounds inputs: {self.output.skipped.path}" if skipped else ""
        logger.info(
            "scored %d images%s%s; scores: %s, maps: %s, overlays: %s%s",
            len(self.rows), decided, volumes, self.filename, self.maps_dir, self.output_dir / "overlays", skipped,
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
            target = self._target(self.maps_dir, output_name(source, self.root), "_anomaly_map.nii.gz")
            nib.save(nib.Nifti1Image(array.astype(np.float32), affine), target)
            verdict = "" if math.isnan(self.threshold) else decision(volume["score"], self.threshold)
            rows.append({"volume": source, "n_slices": volume["n_slices"], "score": volume["score"],
                         "decision": verdict})
        with open(self._target(self.output_dir, Path("volumes"), ".csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=("volume", "n_slices", "score", "decision"))
            writer.writeheader()
            writer.writerows(rows)
