"""The MONAI Label infer task that serves the HDHKD bundle: an image in; the float anomaly heat-map (NIfTI, at the
image's own size) and the image score, threshold and decision (in the JSON result) out.

It is MONAI Label's :class:`BundleInferTask`, which builds the pre-processing, network and inferer from the bundle's
``configs/inference.json`` and loads ``models/model.pt``; this class only adds what an anomaly detector answers
beside a map: the score of the bundle's inference (``score_top_k``, on the map at the network's size, before it is
resized to the image) and the decision against the threshold stored in the checkpoint.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Dict, Sequence

from monai.transforms import SqueezeDimd
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.transform.post import Restored

from hdhkd_monai.anomaly_map import image_score
from hdhkd_monai.engines.evaluator import plain_tensor
from hdhkd_monai.handlers.scores import decision


class AnomalyMapInferTask(BundleInferTask):
    """Serves the bundle at ``path`` (a folder with ``configs/inference.json``, ``configs/metadata.json`` and
    ``models/model.pt``). ``conf`` is the app's ``--conf`` dictionary (``preload``)."""

    def __init__(self, path: str, conf: Dict[str, str], **kwargs: Any) -> None:
        # MONAI Label's own Restored (nearest neighbour, meant for label masks) is replaced by a bilinear one below;
        # its LoadImageTensord wrapper (for in-memory images) would fail on the bundle's optional "mask" key.
        super().__init__(path, conf, add_post_restore=False, extend_load_image=False, load_strict=True, **kwargs)
        self.top_k = self.bundle_config.get_parsed_content("score_top_k")

    def _load_bundle_config(self, path, config):
        """The bundle's config with its metadata, as ``python -m monai.bundle run --meta_file`` reads it
        (``inference.json`` takes ``image_size`` from ``@_meta_``); MONAI Label's own reads the config alone."""
        parser = super()._load_bundle_config(path, config)
        parser.read_meta(os.path.join(path, "configs", self.const.metadata_json()))
        return parser

    def run_inferer(self, data: Dict[str, Any], convert_to_batch: bool = True, device: str = "cuda"):
        # The network gets a plain tensor, as in the bundle's evaluator; Restored finds the image's size in the
        # meta dict.
        image = data[self.input_key]
        data[f"{self.input_key}_meta_dict"] = image.meta
        data[self.input_key] = plain_tensor(image)
        data = super().run_inferer(data, convert_to_batch, device)
        threshold = float(self._get_network(device, data).model.threshold)
        score = float(image_score(data[self.output_label_key][None], top_k=self.top_k))
        data[self.output_json_key] = {
            "score": score,
            "threshold": threshold,
            "decision": None if math.isnan(threshold) else decision(score, threshold),
        }
        return data

    def post_transforms(self, data=None) -> Sequence[Callable]:
        return [
            *super().post_transforms(data),
            Restored(keys=self.output_label_key, ref_image=self.input_key, mode="bilinear", align_corners=False),
            SqueezeDimd(self.output_label_key, dim=0),  # one channel: written as a 2-D float image
        ]

    def writer(self, data: Dict[str, Any], extension=None, dtype=None):
        return super().writer(data, extension=".nii.gz", dtype="float32")
