"""MONAI Label app serving the HDHKD anomaly-detection bundle.

    monailabel start_server --app monailabel_app --studies <image folder> --conf bundle <bundle folder>

``<bundle folder>`` holds ``configs/`` and ``models/model.pt``: an unpacked Model Zoo package
(``python -m hdhkd_monai.zoo pack``) or a training run's ``bundle_root`` with the repository's configs beside it. The
model is served as ``/infer/<bundle folder name>``. See docs/monailabel.md.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict

from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask

from lib.anomaly_infer import AnomalyMapInferTask

logger = logging.getLogger(__name__)
REQUIRED = ("configs/inference.json", "configs/metadata.json", "models/model.pt")


class HDHKDApp(MONAILabelApp):
    def __init__(self, app_dir: str, studies: str, conf: Dict[str, str]) -> None:
        if "bundle" not in conf:
            raise ValueError("the app needs the bundle: --conf bundle <folder with configs/ and models/model.pt>")
        self.bundle = Path(conf["bundle"]).resolve()
        missing = [name for name in REQUIRED if not (self.bundle / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{self.bundle}: not a trained bundle, missing {', '.join(missing)}")
        meta = json.loads((self.bundle / "configs" / "metadata.json").read_text())
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="HDHKD anomaly detection",
            description=meta["description"],
            version=meta["version"],
        )

    def init_infers(self) -> Dict[str, InferTask]:
        task = AnomalyMapInferTask(str(self.bundle), self.conf)
        logger.info(f"+++ serving {self.bundle} as /infer/{self.bundle.name}")
        return {self.bundle.name: task}
