"""The baselines of the ``main`` table under HDHKD's data, preprocessing, resolution and training budget, trained and
evaluated by the bundle's own workflows.

Each baseline is a detector config of the bundle (:data:`BASELINES`), given after ``train.json`` as a user would:
``python -m monai.bundle run --config_file "['configs/train.json','configs/rd4ad.json',...]"`` trains it (the same
iterations, batch size, seed, preset and cached data as an HDHKD row; validation with ``CalibrationHandler`` at the
same threshold quantile writes ``models/model.pt``), then ``evaluate.json`` reports on the test split into
``OUT/baselines/<name>/eval/`` (metrics.json, scores.csv, curves, heat-maps). EfficientAD-S uses the PDN teacher that
the runner distils (the paper configuration's teacher workflow); PatchCore and RD4AD use the pip-shipped
EfficientNet-Lite0 ImageNet weights, the same that HDHKD-S's teacher and student start from.

The in-process helpers below (:func:`data_loaders`, :func:`evaluate_rows`) serve the rows that are not bundle
detectors (anomalib's models, ``experiments/anomalib_peer.py``) and the diagnosis tools.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch
from monai.data import CacheDataset, DataLoader
from monai.utils import set_determinism

from hdhkd_monai.networks import Detector
from hdhkd_monai.data.datalist import datalist_split
from hdhkd_monai.engines import AnomalyEvaluator
from hdhkd_monai.handlers import CalibrationHandler, EvaluationReport
from hdhkd_monai.launcher import OFFLINE_TEACHER, read_config, run_bundles

from experiments.records import read_back
from experiments.report import trainable_params

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


#: The bundle configs that make each baseline of the ``main`` table, after ``train.json``; its row order.
BASELINE_CONFIGS = {"EfficientAD-S": ("paper", "efficientad"), "PatchCore": ("patchcore", "fit"), "RD4AD": ("rd4ad",)}
BASELINES = tuple(BASELINE_CONFIGS)


def run_baselines(args, out: Path, datalist: Path, preset: Path, teacher_ckpt: Path | None) -> list[dict]:
    """Train and evaluate the baselines named in ``args.baselines`` through the bundle; ``teacher_ckpt`` is
    EfficientAD-S's PDN."""
    budget = {"image_size": args.image_size, "iterations": args.iterations, "batch_size": args.batch_size,
              "seed": args.seed, "teacher": str(teacher_ckpt)}  # fmt: skip
    names = [n for n in args.baselines if n in BASELINE_CONFIGS]
    def make_row(name: str, root: Path) -> dict:
        return _bundle_row(name, root, budget, datalist, preset, teacher_ckpt)

    return cached_rows(names, budget, out, args, make_row)


def _bundle_row(name: str, root: Path, budget: dict, datalist: Path, preset: Path, teacher_ckpt: Path | None) -> dict:
    """Train baseline ``name`` into the bundle folder ``root`` (from scratch) and evaluate it; its table row."""
    shutil.rmtree(root, ignore_errors=True)  # another budget's checkpoints must not be resumed
    settings = {"bundle_root": str(root), "datalist": str(datalist), "image_size": budget["image_size"],
                "max_iterations": budget["iterations"], "batch_size": budget["batch_size"],
                "val_interval": budget["iterations"], "cache_rate": 1.0, "seed": budget["seed"],
                **({"teacher_ckpt": str(teacher_ckpt)} if teacher_ckpt else {})}  # fmt: skip
    root.mkdir(parents=True)
    (root / "run.json").write_text(json.dumps(settings, indent=2))
    detector = ["train", *BASELINE_CONFIGS[name]]
    runs = [[*detector, preset, root / "run.json"], [*detector, "evaluate", preset, root / "run.json"]]
    train_s, _ = run_bundles(runs, log=root / "log.txt")
    metrics = json.loads((root / "eval" / "metrics.json").read_text())
    return {"name": name, "budget": budget, "train_s": train_s,
            "trainable_params": trainable_params(runs[0]), **metrics}  # fmt: skip


def cached_rows(names, budget: dict, out: Path, args, make_row) -> list[dict]:
    """The rows ``names``, each made by ``make_row(name, OUT/baselines/<name>)`` and kept in
    ``OUT/baselines/<name>.json``; a row already made under ``budget`` is read back instead (unless ``args.fresh``)."""
    rows = []
    for name in names:
        record = out / "baselines" / f"{name}.json"
        kept = read_back(record, name, lambda kept: kept["budget"] == budget, args.fresh)
        if kept:
            rows.append(kept)
            continue
        print(f"{name}: training", flush=True)
        rows.append(make_row(name, record.with_suffix("")))
        print(f"  AUROC {rows[-1]['image']['auroc']:.4f}, training {rows[-1]['train_s']:.0f} s", flush=True)
        record.parent.mkdir(exist_ok=True)
        record.write_text(json.dumps(rows[-1], indent=2, default=float))
    return rows


def evaluate_rows(builders: dict, budget: dict, out: Path, args, validation, test, threshold_quantile: float) -> list[dict]:
    """Build (``builders``: row name -> function returning the fitted detector, for models that are not bundle
    detectors), calibrate and evaluate each row into ``out/baselines/<name>``, in this process."""

    def make_row(name: str, root: Path) -> dict:
        set_determinism(seed=args.seed)
        start = time.time()
        model = builders[name]()
        train_s = time.time() - start
        metrics = _evaluate(model, validation, test, threshold_quantile, root / "eval")
        return {"name": name, "budget": budget, "train_s": train_s,
                "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad), **metrics}

    return cached_rows(list(builders), budget, out, args, make_row)
