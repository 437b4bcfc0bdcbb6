"""The MONAI Label infer task that serves a Model Zoo package of any of the bundle's detectors (HDHKD or a
baseline): an image in; the float anomaly heat-map (NIfTI, on the image's own grid) and the image score, threshold
and decision (in the JSON result) out.

It is MONAI Label's :class:`BundleInferTask`, which builds the pre-processing, network and inferer from the
package's ``configs/inference.json``, loads ``models/model.pt`` and puts the package folder first on ``sys.path``
so that its ``scripts/`` (the package's own copy of the hdhkd-monai code) is imported: hdhkd-monai itself is not
needed here. This class adds what an anomaly detector answers beside a map: the image score of the detector's
prediction (the score of the bundle's inference, whichever detector it is) and the decision against the threshold
stored in the checkpoint; it writes the map with the image's geometry as ITK reads the image, so it overlays the
image in a viewer; an image that cannot be read raises :class:`UnreadableImageError`.
"""

from __future__ import annotations

import importlib
import math
import os
import tempfile
from typing import Any, Callable, Dict, Sequence

import itk
import numpy as np
import torch
from monai.transforms import SqueezeDimd
from monai.utils import convert_to_tensor
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.transform.post import Restored


class UnreadableImageError(ValueError):
    """The posted image could not be read or pre-processed; the message names it and the reader's complaint."""


class AnomalyMapInferTask(BundleInferTask):
    """Serves the package at ``path`` (a folder with ``configs/inference.json``, ``configs/metadata.json``,
    ``models/model.pt`` and ``scripts/``). ``conf`` is the app's ``--conf`` dictionary (``preload``)."""

    def __init__(self, path: str, conf: Dict[str, str], **kwargs: Any) -> None:
        # MONAI Label's own Restored (nearest neighbour, meant for label masks) is replaced by a bilinear one below;
        # its LoadImageTensord wrapper (for in-memory images) would fail on the bundle's optional "mask" key.
        super().__init__(path, conf, add_post_restore=False, extend_load_image=False, load_strict=True, **kwargs)
        # the package's own code (BundleInferTask put the package first on sys.path)
        self.decision = importlib.import_module("scripts.handlers.scores").decision

    def _load_bundle_config(self, path, config):
        """The bundle's config with its metadata, as ``python -m monai.bundle run --meta_file`` reads it
        (``inference.json`` takes ``image_size`` from ``@_meta_``); MONAI Label's own reads the config alone."""
        parser = super()._load_bundle_config(path, config)
        parser.read_meta(os.path.join(path, "configs", self.const.metadata_json()))
        return parser

    def run_pre_transforms(self, data: Dict[str, Any], transforms):
        try:
            return super().run_pre_transforms(data, transforms)
        except Exception as error:  # any reader's failure on a bad upload: the client gets the reason
            cause = error
            while cause.__cause__ is not None:
                cause = cause.__cause__
            raise UnreadableImageError(f"cannot read the image {os.path.basename(str(data.get('image')))!r}: "
                                       f"{' '.join(str(cause).split())}") from error

    def run_inferer(self, data: Dict[str, Any], convert_to_batch: bool = True, device: str = "cuda"):
        """One forward pass of the detector inside the network (``AnomalyMapNet(detector)``): its prediction's map
        is the output and its image score goes into the JSON result, as the bundle's evaluator takes them."""
        # The detector gets a plain tensor, as in the bundle's evaluator; Restored finds the image's size in the
        # meta dict.
        image = data[self.input_key]
        data[f"{self.input_key}_meta_dict"] = image.meta
        data[self.input_key] = convert_to_tensor(image, track_meta=False)
        detector = self._get_network(device, data).model
        with torch.no_grad():
            prediction = detector(data[self.input_key][None].to(torch.device(device)))
        data[self.output_label_key] = prediction.anomaly_map[0]
        threshold = float(detector.threshold)
        score = float(prediction.pred_score[0])
        data[self.output_json_key] = {
            "score": score,
            "threshold": threshold,
            "decision": None if math.isnan(threshold) else self.decision(score, threshold),
        }
        return data

    def post_transforms(self, data=None) -> Sequence[Callable]:
        return [
            *super().post_transforms(data),
            Restored(keys=self.output_label_key, ref_image=self.input_key, mode="bilinear", align_corners=False),
            SqueezeDimd(self.output_label_key, dim=0),  # one channel: written as a float image on the image's grid
        ]

    def writer(self, data: Dict[str, Any], extension=None, dtype=None):
        """The map as float32 NIfTI with the image's size, spacing, origin and direction as ITK reads the image (the
        reader of 3D Slicer and of MONAI Label's clients), so that it overlays the image."""
        reference = itk.imread(data["image_path"])
        pred = np.asarray(convert_to_tensor(data[self.output_label_key], track_meta=False), dtype=np.float32)
        grid = itk.array_view_from_image(reference).shape  # (rows, columns): the package's reader loads images so
        if pred.shape != grid:
            raise RuntimeError(f"map {pred.shape} does not match the image's grid {grid} (rows, columns)")
        out = itk.image_from_array(np.ascontiguousarray(pred))
        out.CopyInformation(reference)
        path = tempfile.NamedTemporaryFile(suffix=".nii.gz", delete=False).name
        itk.imwrite(out, path)
        return path, data[self.output_json_key]
