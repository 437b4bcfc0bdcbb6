"""Why the project's PatchCore trails anomalib's: each difference between the two, switched one at a time.

    python experiments/patchcore_diagnosis.py --data ../shared/data/neh-oct [--preset oct2017 --normal NORMAL]
        [--image-size 128] [--seed 0] [--banks coreset exact full] [--out runs/patchcore-diagnosis/<set>]

On the runner's datalist and loaders (the same images, split and size as ``experiments/run.py main``), with the
EfficientNet-Lite0 ImageNet weights and layers (2, 3) of both, it scores the test images under every combination of:

- input normalisation: ``timm`` (the backbone's own mean/std, 0.5/0.5, what the project's PatchCore uses) or
  ``imagenet`` (0.485.../0.229..., what anomalib's pre-processor applies whatever the backbone);
- patch feature: ``pooled`` (the project's: each layer channel-pooled to 1024, the concatenation pooled to 384) or
  ``concat`` (anomalib's: the two layers' 40 + 112 channels concatenated as they are);
- memory bank (``--banks``): ``coreset``, the project's before issue 21 (10 %, greedy k-center on a 128-d Gaussian
  projection); ``exact``, the same greedy k-center on the features themselves (the default since); ``full``, every
  training patch;
- image score: the largest patch distance (``max``) or that times the paper's eq. 7 weight over 9 bank neighbours
  (``reweight``, anomalib's default).

Prints a table of test AUROCs and writes it with the counts to ``OUT/diagnosis-seed<S>-<banks>.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from argparse import Namespace
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from monai.utils import set_determinism
from sklearn.metrics import roc_auc_score

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from experiments.baselines import BACKBONE, data_loaders
from experiments.run import prepare_data
from hdhkd_monai.baselines import PatchCore
from hdhkd_monai.distill import channel_pool
from hdhkd_monai.networks import PretrainedTeacher

NORMALISATION = {"timm": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
                 "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}  # fmt: skip


def embed(model: PatchCore, x: torch.Tensor, normalisation: str, feature: str) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] -> patch features [B, C, h, w] under one normalisation and one feature recipe."""
    target = model.teacher.target  # the pretrained CNN and its pooling, under another input normalisation here
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in NORMALISATION[normalisation])
    layers = [F.avg_pool2d(f, 3, 1, 1) for f in target.backbone((x - mean) / std)]
    if feature == "pooled":
        layers = [channel_pool(f, target.layer_dim) for f in layers]
    grid = layers[0].shape[-2:]
    out = torch.cat([F.interpolate(f, size=grid, mode="bilinear", align_corners=False) for f in layers], dim=1)
    return channel_pool(out, target.out_channels) if feature == "pooled" else out


def features_of(model, loader, normalisation, feature):
    """Patch features [N, h*w, C] and labels [N] of every image of a loader."""
    feats, labels = [], []
    for batch in loader:
        with torch.no_grad():
            f = embed(model, batch["image"].as_tensor(), normalisation, feature)
        feats.append(rearrange(f, "b c h w -> b (h w) c"))
        labels.append(torch.as_tensor(batch["label"]).as_subclass(torch.Tensor))
    return torch.cat(feats), torch.cat(labels).flatten()


def bank_of(model: PatchCore, train: torch.Tensor, bank: str) -> torch.Tensor:
    """The memory bank ``bank`` (see the module docstring) of these training patches."""
    patches = train.flatten(0, 1)
    if bank == "full":
        return patches
    model.coreset_ratio = 0.1
    model.projection_dim = 128 if bank == "coreset" else None
    model.memory_bank = torch.empty(0, patches.shape[1])
    return model.fit_bank(patches).memory_bank


def image_scores(model: PatchCore, test: torch.Tensor) -> dict[str, torch.Tensor]:
    """Both image scores of every test image: ``max`` and ``reweight``."""
    out = {"max": [], "reweight": []}
    for chunk in test.split(16):
        b, p, _ = chunk.shape
        dist, index = model.nearest(chunk.flatten(0, 1))
        dist, index = dist.view(b, p), index.view(b, p)
        out["max"].append(dist.max(dim=1).values)
        out["reweight"].append(model.reweighted(chunk, dist, index))
    return {k: torch.cat(v) for k, v in out.items()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--preset", default="oct2017")
    parser.add_argument("--normal", default="NORMAL")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--banks", nargs="+", choices=["coreset", "exact", "full"], default=["coreset"],
                        help="memory banks to score against (full: every training patch, slow)")
    parser.add_argument("--normalisations", nargs="+", choices=list(NORMALISATION), default=list(NORMALISATION))
    parser.add_argument("--features", nargs="+", choices=["pooled", "concat"], default=["pooled", "concat"])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    out = args.out or REPO / "runs" / "patchcore-diagnosis" / args.data.name
    out.mkdir(parents=True, exist_ok=True)
    set_determinism(seed=args.seed)  # the training loader's order, hence the patches the coreset starts from
    datalist = prepare_data(Namespace(data=args.data, normal=args.normal, val_fraction=0.15), out)
    _, train_loader, _, test_loader = data_loaders(datalist, REPO / "configs" / f"{args.preset}.json", args.image_size, 4)
    model = PatchCore(PretrainedTeacher(**BACKBONE), seed=args.seed, num_neighbors=9)
    results = []
    for normalisation, feature in itertools.product(args.normalisations, args.features):
        start = time.time()
        train, _ = features_of(model, train_loader, normalisation, feature)
        test, labels = features_of(model, test_loader, normalisation, feature)
        for bank in args.banks:
            model.memory_bank = bank_of(model, train, bank)
            for score, values in image_scores(model, test).items():
                auroc = 100 * roc_auc_score(labels.numpy(), values.numpy())
                results.append({"normalisation": normalisation, "feature": feature, "bank": bank, "score": score,
                                "auroc": auroc, "dim": test.shape[-1], "bank_rows": len(model.memory_bank)})  # fmt: skip
                print(f"{normalisation:9s} {feature:7s} {bank:8s} {score:9s} AUROC {auroc:.2f} "
                      f"(dim {test.shape[-1]}, bank {len(model.memory_bank)}, {time.time() - start:.0f} s)", flush=True)
    record = {"data": args.data.name, "image_size": args.image_size, "seed": args.seed,
              "n_train_images": len(train), "n_test_normal": int((labels == 0).sum()),
              "n_test_abnormal": int((labels == 1).sum()), "results": results}  # fmt: skip
    (out / f"diagnosis-seed{args.seed}-{'-'.join(args.banks)}.json").write_text(json.dumps(record, indent=2))
    return record


if __name__ == "__main__":
    main()
