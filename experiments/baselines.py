"""The baselines of the ``main`` table under HDHKD's data, preprocessing, resolution and training budget.

EfficientAD-S reuses HDHKD's distilled teacher; PatchCore and RD4AD use the same pip-shipped EfficientNet-Lite0
ImageNet weights the teacher was distilled from. Each is trained for the same iterations at the same batch size,
its decision threshold is the same quantile of the normal validation scores that HDHKD's calibration uses, and it
is scored with the same metric functions.
"""

from __future__ import annotations

import json
import time
from itertools import cycle, islice
from pathlib import Path

import numpy as np
import torch
from monai.data import DataLoader, Dataset
from monai.utils import set_determinism
from tqdm import tqdm

from hdhkd_monai import metrics
from hdhkd_monai.baselines import RD4AD, EfficientAD, PatchCore
from hdhkd_monai.data.datalist import datalist_split
from hdhkd_monai.handlers import ScoreWriter, load_network
from hdhkd_monai.launcher import OFFLINE_TEACHER, read_config

# The ImageNet weights the teacher was distilled from.
BACKBONE = {"backbone": OFFLINE_TEACHER["target_backbone"], "weights": OFFLINE_TEACHER["target_weights"]}


def _loader(datalist: Path, split: str, transform, batch_size: int, shuffle: bool = False) -> DataLoader:
    # Image-level scores only: lesion masks (present for some test images) are not loaded.
    items = [{k: v for k, v in item.items() if k != "mask"} for item in datalist_split(str(datalist), split)]
    return DataLoader(Dataset(items, transform), batch_size=batch_size, shuffle=shuffle)


def _images(loader: DataLoader):
    return (batch["image"] for batch in loader)


@torch.no_grad()
def _scores(model, loader: DataLoader) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    model.eval()
    labels, scores, classes, paths = [], [], [], []
    for batch in tqdm(loader, desc="scoring", leave=False):
        score, _ = model.predict(batch["image"])
        scores += score.tolist()
        labels += batch["label"].tolist()
        classes += list(batch["class"])
        paths += list(batch["image"].meta["filename_or_obj"])
    return np.array(labels), np.array(scores), classes, paths


def _write_scores(filename: Path, threshold: float, labels, scores, classes, paths) -> None:
    """The per-image CSV in the columns of HDHKD's ``eval/scores.csv``, for ``experiments/compare.py``."""
    writer = ScoreWriter(filename, threshold)
    for row in zip(paths, labels, classes, scores):
        writer.add(*row)
    writer.write_csv()


def _train(model, loader: DataLoader, iterations: int) -> None:
    """The same iterations and batches as HDHKD, with the optimiser of the baseline's own paper."""
    optimizer = model.configure_optimizer()
    model.train()
    for batch in tqdm(islice(cycle(loader), iterations), total=iterations, desc="training", leave=False):
        optimizer.zero_grad()
        loss = model.loss(batch["image"])
        loss.backward()
        optimizer.step()


def run_baselines(args, out: Path, datalist: Path, preset: Path, teacher_ckpt: Path) -> list[dict]:
    # The paper configuration: EfficientAD-S runs on the PDN teacher that the runner distils with it.
    parser = read_config(["train", "paper", preset], image_size=args.image_size)
    transform = parser.get_parsed_content("preprocessing")
    threshold_quantile = parser["threshold_quantile"]
    train = _loader(datalist, "training", transform, args.batch_size, shuffle=True)
    validation = _loader(datalist, "validation", transform, args.batch_size)
    test = _loader(datalist, "test", transform, args.batch_size)

    def efficientad():
        teacher = load_network(parser.get_parsed_content("teacher_def"), teacher_ckpt, key="teacher")
        model = EfficientAD(teacher, image_size=args.image_size)
        _train(model, train, args.iterations)
        model.fit_map_normalisation(_images(validation))
        return model

    def patchcore():
        return PatchCore(**BACKBONE, out_channels=384).fit(_images(train))

    def rd4ad():
        model = RD4AD(**BACKBONE)
        _train(model, train, args.iterations)
        return model

    # A baseline already evaluated under this budget is read back instead of trained again (unless --fresh).
    budget = {"image_size": args.image_size, "iterations": args.iterations, "batch_size": args.batch_size,
              "seed": args.seed, "teacher": str(teacher_ckpt)}  # fmt: skip
    rows = []
    for name, build in (("EfficientAD-S", efficientad), ("PatchCore", patchcore), ("RD4AD", rd4ad)):
        record = out / "baselines" / f"{name}.json"
        previous = json.loads(record.read_text()) if record.exists() and not args.fresh else {}
        if previous.get("budget") == budget:
            print(f"{name}: evaluated before under this budget, read from {record}", flush=True)
            rows.append(previous)
            continue
        set_determinism(seed=args.seed)
        start = time.time()
        print(f"{name}: training", flush=True)
        model = build()
        train_s = time.time() - start
        val_labels, val_scores, _, _ = _scores(model, validation)
        threshold = float(np.quantile(val_scores[val_labels == 0], threshold_quantile))
        labels, scores, classes, paths = _scores(model, test)
        _write_scores(record.with_suffix(".scores.csv"), threshold, labels, scores, classes, paths)
        row = {
            "name": name,
            "budget": budget,
            "train_s": train_s,
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "image": metrics.image_metrics(labels, scores, threshold),
            "per_class": metrics.per_class_metrics(labels, scores, classes, threshold),
        }
        print(f"  AUROC {row['image']['auroc']:.4f}, training {train_s:.0f} s", flush=True)
        record.parent.mkdir(exist_ok=True)
        record.write_text(json.dumps(row, indent=2, default=float))
        rows.append(row)
    return rows
