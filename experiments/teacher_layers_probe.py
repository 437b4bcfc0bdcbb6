"""Which teacher layers hold what a nearest-neighbour search needs? A kNN probe of HDHKD-S's teacher by layer set.

``python experiments/teacher_layers_probe.py DATALIST PRESET [--layers 2,3 1,2,3 ...]``

For each set of timm feature indices of EfficientNet-Lite0 (``2,3`` is the bundle's teacher: stride 8; ``1,...``
adds the stride-4 stage and makes the grid stride 4), the teacher's features (ImageNet normalisation, the bundle's)
of every training image form the bank; a test image scores the mean of the top 5 % of its cells' squared nearest
distances (the bundle's image score). Prints the test AUROC with the grid and bank size. Issue 21's "teacher
layers" lever, measured without training a student.
"""

from __future__ import annotations

import argparse
import json

import torch
from sklearn.metrics import roc_auc_score

from hdhkd_monai.anomaly_map import image_score
from hdhkd_monai.distill import PatchCoreTarget
from hdhkd_monai.launcher import OFFLINE_TEACHER, preprocessing
from hdhkd_monai.networks.blocks.patch_memory import nearest_neighbours

BATCH = 8
TOP_FRACTION = 0.05  # of the cells: train.json's score_top_k is 5 % of the map's pixels


def features(target: PatchCoreTarget, images: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] -> [N, C, h, w] teacher features, in batches."""
    with torch.no_grad():
        return torch.cat([target(images[i : i + BATCH]) for i in range(0, len(images), BATCH)])


def knn_auroc(layers: tuple[int, ...], train: torch.Tensor, test: torch.Tensor, labels: list[int]) -> str:
    target = PatchCoreTarget(OFFLINE_TEACHER["target_backbone"], OFFLINE_TEACHER["target_weights"], layers, 384,
                             "imagenet").eval()  # fmt: skip
    bank = features(target, train)
    channels = bank.shape[1]
    bank = bank.permute(0, 2, 3, 1).reshape(-1, channels)
    query = features(target, test)
    n, _, h, w = query.shape
    distances = nearest_neighbours(query.permute(0, 2, 3, 1).reshape(-1, channels), bank)[0]
    scores = image_score(distances.reshape(n, 1, h, w), max(1, int(TOP_FRACTION * h * w)))
    return f"layers {layers}: grid {h}x{w}, bank {bank.shape[0]} cells, test AUROC {100 * roc_auc_score(labels, scores):.2f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datalist", help="a runner datalist.json (training / test items)")
    parser.add_argument("preset", help="data set preset of configs/ (br35h, oct2017, chest_ct_png, ...)")
    parser.add_argument("--layers", nargs="+", default=["2,3", "1,2,3", "1,2"], help="timm feature index sets")
    args = parser.parse_args(argv)
    items = json.loads(open(args.datalist).read())
    pre = preprocessing([args.preset])
    train, test = (torch.stack([pre({"image": it["image"]})["image"] for it in items[s]]) for s in ("training", "test"))
    labels = [int(it["label"]) for it in items["test"]]
    print(f"{len(items['training'])} training images, test {labels.count(0)} normal / {sum(labels)} abnormal")
    for layers in args.layers:
        print(knn_auroc(tuple(int(i) for i in layers.split(",")), train, test, labels), flush=True)


if __name__ == "__main__":
    main()
