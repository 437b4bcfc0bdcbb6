"""Why a trained EfficientAD-S row ranks where it does: each of its two maps alone, and its teacher's output energy.

    python experiments/efficientad_branches.py runs/s13/chestct/seed1/baselines/EfficientAD-S --preset chest_ct_png

Reads the row's ``models/model.pt`` and the test images of its ``eval/scores.csv`` (as ``experiments/run.py main``
wrote them), loads each image with the preset's preprocessing at the row's image size, and prints for the
student-teacher map, the autoencoder map and both (the detector's score): the test AUROC and the median image score
of the normal and abnormal test images, in EfficientAD's normalised units (``0.1`` is the normal validation maps' 0.995
quantile). Then, per group (training normals of the datalist, test normals, test abnormals), the medians of the
teacher's mean squared normalised output and of the largest squared student-teacher difference: a teacher whose
output fades on images unlike its distillation set gives them a small discrepancy however abnormal they are.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hdhkd_monai.anomaly_map import normalize_map  # noqa: E402
from hdhkd_monai.handlers import load_network  # noqa: E402
from hdhkd_monai.launcher import preprocessing, read_config  # noqa: E402


def load_row(row: Path) -> torch.nn.Module:
    """The row's calibrated EfficientAD detector, built from its checkpoint as ``inference.json`` builds it."""
    net = read_config(["inference", "efficientad"], bundle_root=str(row)).get_parsed_content("network_def")
    return load_network(net, row / "models" / "model.pt", key="model").eval().model


@torch.no_grad()
def image_measures(model: torch.nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Each map's score, the teacher's output energy and the largest squared discrepancy of ``x [1, 3, H, W]``."""
    local, global_ = model.local_global_maps(x)
    target, student, _, _ = model.features(x)
    local, global_ = normalize_map(local, model.quantiles_st), normalize_map(global_, model.quantiles_ae)
    return {
        "student-teacher": float(local.amax()),
        "autoencoder": float(global_.amax()),
        "both": float(model.predict(x).pred_score),
        "teacher energy": float(target.square().mean()),
        "max (t - s)^2": float((target - student).square().mean(1).amax()),
    }


def measure(row: Path, preset: str) -> dict[str, list]:
    """``{group: [image_measures, ...]}`` over the row's training normals and its scored test images."""
    model, run = load_row(row), json.loads((row / "run.json").read_text())
    load = preprocessing([preset], image_size=run["image_size"])
    with open(row / "eval" / "scores.csv") as f:
        tested = [(r["path"], "test abnormal" if int(r["label"]) else "test normal") for r in csv.DictReader(f)]
    datalist = json.loads(Path(run["datalist"]).read_text())
    training = [(item["image"], "training normal") for item in datalist["training"]]
    groups: dict[str, list] = {}
    for path, group in training + tested:
        groups.setdefault(group, []).append(image_measures(model, load({"image": path})["image"][None]))
    return groups


def report(groups: dict[str, list]) -> list[str]:
    """The lines printed: per map the test AUROC and group medians; per group the teacher's medians."""
    normal, abnormal = groups["test normal"], groups["test abnormal"]
    labels = [0] * len(normal) + [1] * len(abnormal)
    lines = [f"test normal / abnormal: {len(normal)} / {len(abnormal)}"]
    for key in ("student-teacher", "autoencoder", "both"):
        scores = [m[key] for m in normal + abnormal]
        lines.append(f"{key:16s} AUROC {100 * roc_auc_score(labels, scores):6.2f}; median score normal "
                     f"{np.median([m[key] for m in normal]):.3f}, abnormal {np.median([m[key] for m in abnormal]):.3f}")
    for group, measures in groups.items():
        lines.append(f"{group:16s} n={len(measures):4d}; median teacher energy "
                     f"{np.median([m['teacher energy'] for m in measures]):.3f}, max (t - s)^2 "
                     f"{np.median([m['max (t - s)^2'] for m in measures]):.3f}")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("row", type=Path, help="an EfficientAD-S row folder (models/model.pt, eval/scores.csv)")
    parser.add_argument("--preset", required=True, help="the data-set preset the row was trained with")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print("\n".join(report(measure(args.row, args.preset))), flush=True)


if __name__ == "__main__":
    main()
