"""Score fusion probe: a trained HDHKD row's discrepancy map beside a kNN map on the same teacher's features.

    python experiments/fusion_probe.py runs/<set>/table5/7_full --preset br35h [--bank-images 300] [--seed 0]

The trained row (a folder written by ``experiments/run.py``: ``run.json``, ``models/model.pt``) is loaded through the
bundle's own config. Its frozen teacher's raw patch features of the training images form a memory bank (every patch of
``--bank-images`` images drawn with ``--seed``; all of them without the option), and each validation and test patch
scores its distance to the nearest bank patch (PatchCore's score, on HDHKD's teacher). Two fusions: each map
normalised by its own quantiles on the normal validation images and summed (EfficientAD's combination of its two
maps), and the plain sum of the discrepancy and the squared kNN distance on the teacher's normalised features per
channel, which are in the same units (both a mean squared channel difference from a normal prediction of the teacher
features). The same for the cosine discrepancy ``1 - cos(f_t, f_sd)`` (RD4AD's measure): alone, with the
normalised kNN map, and plus the cosine distance to the nearest normal patch (a second memory of the unit-length
teacher features: the same units). Test AUROC (overall and per class) of each score is written to
``<row>/fusion.json``, with paired bootstrap intervals of the fusions against the single scores and the per-image
scores of each (``scores``, in the order of ``test_images``) for pairing with other rows.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hdhkd_monai.anomaly_map import (  # noqa: E402
    cosine_discrepancy,
    discrepancy_map,
    image_score,
    map_quantiles,
    normalize_map,
    upsample_map,
)
from hdhkd_monai.baselines.common import smooth_map  # noqa: E402
from hdhkd_monai.data.datalist import datalist_split  # noqa: E402
from hdhkd_monai.handlers import load_network  # noqa: E402
from hdhkd_monai.launcher import read_config  # noqa: E402
from hdhkd_monai.networks.blocks import PatchMemory, nearest_neighbours  # noqa: E402
from hdhkd_monai.metrics import auroc, paired_auroc_bootstrap, per_class_metrics  # noqa: E402

from tools.probe import patch_features  # noqa: E402


def load_row(row: Path, preset: str):
    """The row's trained detector, built as the row was trained (a memory it has is not used: the probe fits its
    own), in eval mode; its raw maps (``predict``, before calibration) and its preprocessing."""
    run = json.loads((row / "run.json").read_text())
    parser = read_config(["train", preset, str(row / "run.json")])
    net = load_network(parser.get_parsed_content("anomaly_net"), row / "models" / "model.pt", "model").model.eval()
    return net, parser.get_parsed_content("preprocessing"), run


def images_of(items: list[dict], preprocessing, batch: int = 16):
    """Preprocessed images of ``items`` in batches ``[b, 3, H, W]``."""
    for i in range(0, len(items), batch):
        yield torch.stack([preprocessing(dict(it))["image"].as_tensor() for it in items[i : i + batch]])


@torch.no_grad()
def maps_of(net, banks: dict, items: list[dict], preprocessing) -> dict:
    """Maps ``[N, 1, H, W]`` of ``items``: the raw discrepancy (squared and cosine), the kNN on the raw teacher
    features (PatchCore's, blurred), the squared kNN distance on the normalised teacher features per channel (the
    squared discrepancy's units) and the cosine distance to the nearest normal patch (the cosine's units)."""
    maps = {"disc": [], "cos": [], "knn_sq": [], "knn_cos": [], **({"knn": []} if "raw" in banks else {})}
    for x in images_of(items, preprocessing):
        f_t, f_sd = net.features(x)
        maps["disc"].append(discrepancy_map(f_t, f_sd, x.shape[-2:]))
        maps["cos"].append(upsample_map(cosine_discrepancy(f_t, f_sd), x.shape[-2:]))  # RD4AD's measure
        maps["knn_sq"].append(upsample_map(banks["normalised"](f_t), x.shape[-2:]))
        # on unit vectors |u - v|^2 / 2 = 1 - cos(u, v): the nearest normal patch's cosine distance, cos's units
        unit_cos = banks["unit"](F.normalize(f_t, dim=1)) * f_t.shape[1] / 2
        maps["knn_cos"].append(upsample_map(unit_cos, x.shape[-2:]))
        if "raw" in banks:
            raw = net.teacher(x)
            b, c, h, w = raw.shape
            squared, _ = nearest_neighbours(rearrange(raw, "b c h w -> (b h w) c"), banks["raw"])
            knn = squared.sqrt().view(b, 1, h, w)  # PatchCore's Euclidean distance
            maps["knn"].append(smooth_map(knn, x.shape[-2:]))
    return {k: torch.cat(v) for k, v in maps.items()}


def scores(maps: dict, val_normal: dict, top_k: int) -> dict:
    """Image scores of each map alone and of two fusions: the sum of the maps after each is normalised by its own
    normal validation quantiles, and the plain sum of the discrepancy and the squared normalised kNN distance."""
    result = {
        "disc": image_score(maps["disc"], top_k), "knn_sq_topk": image_score(maps["knn_sq"], top_k),
        "sum_sq": image_score(maps["disc"] + maps["knn_sq"], top_k), "cos": image_score(maps["cos"], top_k),
    }  # fmt: skip
    # maps in other units add after each is normalised by its own normal validation quantiles
    normed = {k: normalize_map(m, map_quantiles(val_normal[k])) for k, m in maps.items()}
    result["disc+knn_sq_normed"] = image_score(normed["disc"] + normed["knn_sq"], top_k)
    result["cos+knn_sq_normed"] = image_score(normed["cos"] + normed["knn_sq"], top_k)
    result["cos+knn_cos"] = image_score(maps["cos"] + maps["knn_cos"], top_k)
    if "knn" in maps:
        fused = normed["disc"] + normed["knn"]
        result.update(knn_max=image_score(maps["knn"]), knn_topk=image_score(maps["knn"], top_k),
                      fused=image_score(fused, top_k), fused_max=image_score(fused))
    return result


def write_scores(folder: Path, test: list[dict], image_scores: dict) -> None:
    """Each score's ``<folder>/<name>.csv`` (path, label, score), the layout experiments/compare.py pairs."""
    folder.mkdir(exist_ok=True)
    for name, values in image_scores.items():
        with open(folder / f"{name}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "label", "score"])
            writer.writerows([it["image"], int(it["label"]), float(v)] for it, v in zip(test, values))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("row", type=Path)
    parser.add_argument("--preset", required=True)
    parser.add_argument("--bank-images", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-patches", type=int, default=None,
                        help="fit the normalised-feature memory as the bundle does (10 %% coreset, at most this many "
                             "patches) instead of keeping every patch; skips the raw-feature kNN")
    args = parser.parse_args(argv)
    start = time.time()
    net, preprocessing, run = load_row(args.row, args.preset)
    train = datalist_split(run["datalist"], "training")
    if args.bank_images is not None and args.bank_images < len(train):
        pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed))[: args.bank_images]
        train = [train[i] for i in pick.tolist()]
    normalised = patch_features(net.teacher_features, images_of(train, preprocessing)).flatten(0, 1)
    memory = PatchMemory(normalised.shape[1], coreset_ratio=1.0 if args.max_patches is None else 0.1,
                         max_patches=args.max_patches, seed=args.seed)
    unit = PatchMemory(normalised.shape[1], coreset_ratio=memory.coreset_ratio, max_patches=args.max_patches,
                       seed=args.seed)
    banks = {"normalised": memory.fit(normalised), "unit": unit.fit(F.normalize(normalised, dim=1))}
    if args.max_patches is None:  # PatchCore's raw-feature kNN beside it, on the full bank
        banks["raw"] = patch_features(net.teacher, images_of(train, preprocessing)).flatten(0, 1)
    print(f"bank: {len(memory.bank)} of {len(normalised)} patches of {len(train)} images ({time.time() - start:.0f} s)", flush=True)
    val = [it for it in datalist_split(run["datalist"], "validation") if int(it["label"]) == 0]
    test = datalist_split(run["datalist"], "test")
    val_maps, test_maps = maps_of(net, banks, val, preprocessing), maps_of(net, banks, test, preprocessing)
    suffix = "" if args.max_patches is None else f"-{args.max_patches}"
    torch.save({"validation": val_maps, "test": test_maps}, args.row / f"fusion_maps{suffix}.pt")
    labels = np.array([int(it["label"]) for it in test])
    classes = [str(it["class"]) for it in test]
    result = {"bank_patches": len(memory.bank), "bank_images": len(train), "seconds": round(time.time() - start), "rows": {}}
    image_scores = {name: s.numpy() for name, s in scores(test_maps, val_maps, net.score_top_k).items()}
    for name, s in image_scores.items():
        per_class = per_class_metrics(labels, s, classes, 0.0)
        result["rows"][name] = {"auroc": 100 * auroc(labels, s), "per_class": {c: 100 * m["auroc"] for c, m in per_class.items()}}
    pairs = (("fused", "disc"), ("fused", "knn_max"), ("fused", "sum_sq"), ("sum_sq", "disc"), ("cos", "disc"),
             ("cos+knn_sq_normed", "sum_sq"), ("cos", "sum_sq"), ("cos+knn_cos", "sum_sq"), ("cos+knn_cos", "cos"))
    for a, b in pairs:
        if a in image_scores and b in image_scores:
            result["rows"][f"{a}-{b}"] = paired_auroc_bootstrap(labels, image_scores[a], image_scores[b])
    write_scores(args.row / f"fusion{suffix}-scores", test, image_scores)
    (args.row / f"fusion{suffix}.json").write_text(json.dumps(result, indent=1, default=float))
    print(json.dumps({k: v.get("auroc", v) for k, v in result["rows"].items()}, indent=1, default=float))
    return result


if __name__ == "__main__":
    main()
