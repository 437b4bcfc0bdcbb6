"""anomalib's own PatchCore and PaDiM as rows of the ``main`` table, run inside the anomalib environment.

    $(experiments/anomalib_env.sh) experiments/anomalib_peer.py --datalist OUT/datalist.json --preset configs/X.json \
        --out OUT --image-size 128 --batch-size 4 --iterations 400 --seed 0 --rows anomalib-PatchCore anomalib-Padim

``experiments/run.py main --baselines ... anomalib-PatchCore anomalib-Padim`` runs this script (through
:mod:`experiments.anomalib_rows`); it is not meant to be called by hand. The rows see exactly what the project's
baselines see: the same datalist, the same cached loaders of :func:`experiments.baselines.data_loaders` (the preset's
preprocessing, at the runner's image size), the same calibration and report (:func:`experiments.baselines.evaluate_rows`).
What is anomalib's is the model: its Lightning module's pre-processor (built for the runner's image size, so its resize
leaves the images as they are; its ImageNet mean/std normalisation applies), its torch model (feature extraction,
memory bank or Gaussians, scoring, anomaly map) and its ``fit``. Lightning's ``Engine`` and the ``Folder`` datamodule
are not used: the images come from the runner's loaders (``Folder(val_split_mode="none")`` with ``engine.fit`` also
fails).

Two changes keep anomalib offline and affordable, and neither changes its result:

- the backbone is built with ``pre_trained=False`` (``True`` downloads from the hub) and then given the pip-shipped
  ImageNet weights of ``tf_efficientnet_lite0`` (:func:`hdhkd_monai.pretrained.efficientnet_lite_state_dict`);
- PatchCore's greedy coreset is anomalib's ``KCenterGreedy`` with its distance update written as one matrix-vector
  product (:class:`FastKCenterGreedy`); it picks the same points (tests/test_anomalib_rows.py), in a fraction of the
  time: anomalib's builds an [N, D] temporary per selected point.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import anomalib
import timm
import torch
from anomalib.models import Padim, Patchcore
from anomalib.models.components import KCenterGreedy
from anomalib.models.image.patchcore import torch_model as patchcore_torch_model

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `experiments` as a package when run as a script

from experiments.anomalib_rows import row_budget
from experiments.baselines import BACKBONE, _images, data_loaders, evaluate_rows
from hdhkd_monai.anomaly_map import AnomalyPrediction
from hdhkd_monai.networks import Detector
from hdhkd_monai.pretrained import efficientnet_lite_state_dict, load_into_features

#: timm feature indices of each row, as the project's baselines count them: PatchCore the stride-8/16 stages (as the
#: project's PatchCore), PaDiM the stride-4/8/16 stages (its paper's layer1-3).
LAYERS = {"anomalib-PatchCore": (2, 3), "anomalib-Padim": (1, 2, 3)}
#: PaDiM keeps a random subset of the concatenated channels; anomalib's default exists only for ResNet-18 (100 of
#: 448) and WideResNet-50 (550 of 1792). EfficientNet-Lite0's 24 + 40 + 112 = 176: 100, as for ResNet-18.
PADIM_FEATURES = 100
CORESET_RATIO, NUM_NEIGHBORS = 0.1, 9  # anomalib's Patchcore defaults, written out


class FastKCenterGreedy(KCenterGreedy):
    """anomalib's ``KCenterGreedy`` with ``|f - c| = sqrt(|f|^2 - 2 f.c + |c|^2)``: one matrix-vector product per
    selected point, the squared norms computed once."""

    def reset_distances(self) -> None:
        super().reset_distances()
        self.squared_norms = self.features.square().sum(dim=1, keepdim=True)

    def update_distances(self, cluster_center) -> None:
        if cluster_center is None:
            return
        center = self.features[cluster_center].squeeze()
        squared = self.squared_norms - 2 * (self.features @ center)[:, None] + center.square().sum()
        distances = squared.clamp_min_(0).sqrt_()
        self.min_distances = distances if self.min_distances is None else torch.minimum(self.min_distances, distances)


class AnomalibDetector(Detector):
    """An anomalib Lightning module under the project's detector contract: [0, 1] images through the module's own
    pre-processor and torch model, its ``InferenceBatch`` as an :class:`AnomalyPrediction`.

    ``input_shapes`` records every input shape the torch model received, so a test can check the image size.
    """

    def __init__(self, module) -> None:
        super().__init__()
        self.module = module
        self.input_shapes: set[tuple[int, ...]] = set()

    def _model_input(self, x: torch.Tensor) -> torch.Tensor:
        x = self.module.pre_processor.transform(x.as_subclass(torch.Tensor))  # a MetaTensor's metadata: not needed
        self.input_shapes.add(tuple(x.shape[1:]))
        return x

    @torch.no_grad()
    def fit(self, images) -> AnomalibDetector:
        """anomalib's training step on every batch (the torch model stores its embeddings), then its ``fit``."""
        self.module.model.train()
        for x in images:
            self.module.model(self._model_input(x))
        self.module.fit()
        self.module.model.eval()
        return self

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> AnomalyPrediction:
        batch = self.module.model(self._model_input(x))
        return AnomalyPrediction(batch.pred_score.flatten(), batch.anomaly_map)


def anomalib_module(name: str, image_size: int):
    """The anomalib Lightning module of row ``name`` with the pip ImageNet weights in its backbone."""
    backbone = BACKBONE["backbone"]
    with torch.device("meta"):
        features = timm.create_model(backbone, features_only=True, out_indices=LAYERS[name])
    layer_names = list(features.feature_info.module_name())
    common = {"backbone": backbone, "layers": layer_names, "pre_trained": False, "post_processor": False,
              "evaluator": False, "visualizer": False}  # fmt: skip
    if name == "anomalib-PatchCore":
        pre = Patchcore.configure_pre_processor(image_size=(image_size, image_size))
        module = Patchcore(**common, coreset_sampling_ratio=CORESET_RATIO, num_neighbors=NUM_NEIGHBORS, pre_processor=pre)
    else:
        pre = Padim.configure_pre_processor(image_size=(image_size, image_size))
        module = Padim(**common, n_features=PADIM_FEATURES, pre_processor=pre)
    extractor = module.model.feature_extractor.feature_extractor
    load_into_features(extractor, backbone, efficientnet_lite_state_dict(backbone), f"the pip package for {backbone}")
    return module


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datalist", type=Path, required=True)
    parser.add_argument("--preset", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--image-size", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--iterations", type=int, required=True, help="recorded in the budget; nothing trains")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--rows", nargs="+", choices=sorted(LAYERS), required=True)
    parser.add_argument("--fresh", action="store_true")
    args = parser.parse_args(argv)

    patchcore_torch_model.KCenterGreedy = FastKCenterGreedy  # the name PatchcoreModel.subsample_embedding calls
    config, train, validation, test = data_loaders(args.datalist, args.preset, args.image_size, args.batch_size)
    budget = row_budget(args, anomalib.__version__)
    detectors = {}

    def builder(name):
        def build():
            detectors[name] = AnomalibDetector(anomalib_module(name, args.image_size)).fit(_images(train))
            return detectors[name]

        return build

    rows = evaluate_rows({name: builder(name) for name in args.rows}, budget, args.out, args, validation, test,
                         config["threshold_quantile"])  # fmt: skip
    for row in rows:  # what the model itself received, for the check that every row sees the same images
        if row["name"] in detectors:
            row["input_shapes"] = sorted(detectors[row["name"]].input_shapes)
            (args.out / "baselines" / f"{row['name']}.json").write_text(json.dumps(row, indent=2, default=float))


if __name__ == "__main__":
    main()
