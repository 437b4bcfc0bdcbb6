"""The baselines of the ``main`` table under HDHKD's data, preprocessing, resolution and training budget.

EfficientAD-S uses the PDN teacher that the runner distils (the paper configuration's teacher workflow); PatchCore and
RD4AD use the pip-shipped EfficientNet-Lite0 ImageNet weights, the same that HDHKD-S's teacher and student start from. Each is trained for the same iterations at the same batch size and
then evaluated by HDHKD's own engine and handlers: ``AnomalyEvaluator`` on the validation split with
``CalibrationHandler`` (the same quantile of the normal validation scores as HDHKD's threshold), then on the test
split with ``EvaluationReport``, which writes ``OUT/baselines/<name>/eval/`` (metrics.json, scores.csv, curves,
heat-maps) as the evaluation workflow does for an HDHKD row.
"""

from __future__ import annotations

import json
import time
from itertools import cycle, islice
from pathlib import Path

import torch
from monai.data import CacheDataset, DataLoader
from monai.utils import set_determinism
from tqdm import tqdm

from hdhkd_monai.baselines import RD4AD, EfficientAD, PatchCore
from hdhkd_monai.networks import Detector
from hdhkd_monai.data.datalist import datalist_split
from hdhkd_monai.engines import AnomalyEvaluator
from hdhkd_monai.handlers import CalibrationHandler, EvaluationReport, load_network
from hdhkd_monai.launcher import OFFLINE_TEACHER, read_config

# The ImageNet weights of HDHKD-S's teacher and of the PDN's distillation target.
BACKBONE = {"backbone": OFFLINE_TEACHER["target_backbone"], "weights": OFFLINE_TEACHER["target_weights"]}
DEVICE = torch.device("cpu")  # where the baselines are trained


def _loader(datalist: Path, split: str, transform, batch_size: int, shuffle: bool = False) -> DataLoader:
    # cached, as the runner's HDHKD rows are: decoding and resizing every batch again would dominate a step
    dataset = CacheDataset(datalist_split(str(datalist), split), transform, progress=False)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle)


def _images(loader: DataLoader):
    return (batch["image"] for batch in loader)


def _evaluate(model: Detector, validation: DataLoader, test: DataLoader, threshold_quantile: float, out: Path) -> dict:
    """Calibrate ``model.threshold`` on the validation split and report on the test split, with HDHKD's engine and
    handlers; returns the report's metrics."""
    calibration = CalibrationHandler(model, low=None, high=None, threshold_quantile=threshold_quantile)
    AnomalyEvaluator(device=DEVICE, val_data_loader=validation, network=model, val_handlers=[calibration]).run()
    report = EvaluationReport(out, threshold=model.threshold)
    AnomalyEvaluator(device=DEVICE, val_data_loader=test, network=model, val_handlers=[report]).run()
    return json.loads((out / "metrics.json").read_text())


def _train(model, loader: DataLoader, iterations: int) -> None:
    """The same iterations and batches as HDHKD, with the optimiser of the baseline's own paper."""
    optimizer = model.configure_optimizer()
    model.train()
    for batch in tqdm(islice(cycle(loader), iterations), total=iterations, desc="training", leave=False):
        optimizer.zero_grad()
        loss = model.loss(batch["image"])
        loss.backward()
        optimizer.step()


def data_loaders(datalist: Path, preset: Path, image_size: int, batch_size: int) -> tuple:
    """The config parser and the training, validation and test loaders every baseline sees: HDHKD's datalist,
    preprocessing and image size, in [0, 1] at ``image_size``."""
    # The paper configuration: EfficientAD-S runs on the PDN teacher that the runner distils with it.
    parser = read_config(["train", "paper", preset], image_size=image_size)
    train = _loader(datalist, "training", parser.get_parsed_content("preprocessing"), batch_size, shuffle=True)
    with_masks = parser.get_parsed_content("validate#preprocessing")  # items with and without a mask in a batch
    validation = _loader(datalist, "validation", with_masks, batch_size)
    test = _loader(datalist, "test", with_masks, batch_size)
    return parser, train, validation, test


#: The baselines of the ``main`` table, in its row order.
BASELINES = ("EfficientAD-S", "PatchCore", "RD4AD")


def run_baselines(args, out: Path, datalist: Path, preset: Path, teacher_ckpt: Path | None) -> list[dict]:
    """Train and evaluate the baselines named in ``args.baselines``; ``teacher_ckpt`` is EfficientAD-S's PDN."""
    parser, train, validation, test = data_loaders(datalist, preset, args.image_size, args.batch_size)
    threshold_quantile = parser["threshold_quantile"]

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

    budget = {"image_size": args.image_size, "iterations": args.iterations, "batch_size": args.batch_size,
              "seed": args.seed, "teacher": str(teacher_ckpt)}  # fmt: skip
    builders = {"EfficientAD-S": efficientad, "PatchCore": patchcore, "RD4AD": rd4ad}
    ours = {name: builders[name] for name in args.baselines if name in builders}
    return evaluate_rows(ours, budget, out, args, validation, test, threshold_quantile)


def evaluate_rows(builders: dict, budget: dict, out: Path, args, validation, test, threshold_quantile: float) -> list[dict]:
    """Build (``builders``: row name -> function returning the fitted detector), calibrate and evaluate each row into
    ``out/baselines/<name>``. A row already evaluated under ``budget`` is read back instead (unless ``args.fresh``)."""
    rows = []
    for name, build in builders.items():
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
        metrics = _evaluate(model, validation, test, threshold_quantile, record.with_suffix("") / "eval")
        row = {
            "name": name,
            "budget": budget,
            "train_s": train_s,
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            **metrics,
        }
        print(f"  AUROC {row['image']['auroc']:.4f}, training {train_s:.0f} s", flush=True)
        record.parent.mkdir(exist_ok=True)
        record.write_text(json.dumps(row, indent=2, default=float))
        rows.append(row)
    return rows
