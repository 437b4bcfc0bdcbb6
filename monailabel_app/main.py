"""MONAI Label app serving a Model Zoo package of the bundle (HDHKD or a baseline).

    monailabel start_server --app monailabel_app --studies <image folder> --conf bundle <package folder>

``<package folder>`` is an unpacked Model Zoo package (``python -m hdhkd_monai.zoo pack``): ``configs/``,
``models/model.pt`` and ``scripts/``, the package's own copy of the code, so hdhkd-monai need not be installed
where the server runs. The model is served as ``/infer/<package folder name>``. See docs/monailabel.md.

The studies folder lists the image formats the bundle reads (:data:`IMAGE_EXTENSIONS`). A request for a model or
an image id the server does not have is answered 404, an image that cannot be read 422, each with the reason.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Dict

from fastapi import HTTPException
from monailabel.config import settings
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask

from lib.anomaly_infer import AnomalyMapInferTask, UnreadableImageError

logger = logging.getLogger(__name__)
REQUIRED = ("configs/inference.json", "configs/metadata.json", "models/model.pt", "scripts/__init__.py")
#: What the studies folder lists: the 2-D images the bundle reads (OCT2017 and NEH ship B-scans as .jpeg).
IMAGE_EXTENSIONS = ["*.jpeg", "*.jpg", "*.png", "*.tif", "*.tiff", "*.dcm", "*.nii.gz", "*.nii"]


class HDHKDApp(MONAILabelApp):
    def __init__(self, app_dir: str, studies: str, conf: Dict[str, str]) -> None:
        if "bundle" not in conf:
            raise ValueError("the app needs the package: --conf bundle <unpacked Model Zoo package folder>")
        self.bundle = Path(conf["bundle"]).resolve()
        missing = [name for name in REQUIRED if not (self.bundle / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{self.bundle}: not a packed model (python -m hdhkd_monai.zoo pack), missing "
                                    f"{', '.join(missing)}")
        meta = json.loads((self.bundle / "configs" / "metadata.json").read_text())
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="HDHKD anomaly detection",
            description=meta["description"],
            version=meta["version"],
        )

    def init_datastore(self) -> Datastore:
        return LocalDatastore(self.studies, extensions=IMAGE_EXTENSIONS,
                              auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
                              read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY)

    def init_infers(self) -> Dict[str, InferTask]:
        task = AnomalyMapInferTask(str(self.bundle), self.conf)
        logger.info(f"+++ serving {self.bundle} as /infer/{self.bundle.name}")
        return {self.bundle.name: task}

    def infer(self, request, datastore=None):
        """MONAI Label's inference, with a client's mistakes answered 404/422 and the reason instead of 500."""
        model, image = request.get("model"), request.get("image")
        if model not in self._infers:
            raise HTTPException(404, f"no model {model!r} here; this server serves {sorted(self._infers)}")
        datastore = datastore or self.datastore()
        if isinstance(image, str) and not os.path.exists(image) and not datastore.get_image_uri(image):
            raise HTTPException(404, f"no image {image!r}: not an image id of the studies folder {self.studies} "
                                     "(GET /datastore/ lists them), and no file was uploaded")
        try:
            return super().infer(request, datastore)
        except UnreadableImageError as error:
            raise HTTPException(422, str(error)) from None
