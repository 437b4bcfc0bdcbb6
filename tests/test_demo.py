"""The demo end to end at a reduced size: it prints where its outputs are, and the model it trains separates the
synthetic anomalies from normal B-scans clearly better than chance."""

import copy
import json
import re
from pathlib import Path

import pytest

from hdhkd_monai import demo

pytestmark = pytest.mark.slow  # the whole demo recipe, several minutes on 2 cores

# The demo's recipe at 96 instead of 128 pixels, with shorter student training.
SHORT = copy.deepcopy(demo.SETTINGS)
SHORT["data"].update(n_train=60, n_test_per_class=20, val_fraction=0.15, val_abnormal_fraction=0.25)
SHORT["common"]["image_size"] = 96
SHORT["student"].update(max_iterations=100, val_interval=50)
# Measured on this recipe (HDHKD-S, seed 0, 20 normal / 42 abnormal test images, quiet machine): AUROC 0.939 in one
# run, 47 s; at 150 iterations it gave 0.946 (drusen 0.904, fluid 0.943, lesions 0.993; pixel AUROC 0.937). CPU
# training is not bit-reproducible across runs here (the paper configuration's recipe gave 0.78 and 0.74 in two
# runs), hence the margin; flipped labels or scores would give below 0.5.
MIN_AUROC = 0.80


def test_demo_trains_a_model_that_detects_the_synthetic_anomalies(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "SETTINGS", SHORT)
    demo.main(["--out", str(tmp_path / "demo")])
    printed = capsys.readouterr().out

    for label in ("metrics:", "per-image CSV:", "heat-maps:", "checkpoints:"):
        path = Path(re.search(rf"{label}\s+(\S+)", printed).group(1))
        assert path.exists(), f"{label} {path} was printed but does not exist"
    assert len(list((tmp_path / "demo" / "eval" / "heatmaps").glob("*.png"))) == 2 * SHORT["evaluate"]["n_heatmaps"]
    assert printed.count("-m monai.bundle run --config_file") == 2  # each step printed as the command that ran it

    report = json.loads((tmp_path / "demo" / "eval" / "metrics.json").read_text())
    test_items = json.loads((tmp_path / "demo" / "data" / "datalist.json").read_text())["test"]
    assert report["image"]["n_normal"] == sum(item["label"] == 0 for item in test_items) == 20
    assert report["image"]["n_abnormal"] == len(test_items) - 20 >= 40  # the rest of each class is in validation
    auroc = float(re.search(r"AUROC (\d\.\d+)", printed).group(1))
    assert auroc == pytest.approx(report["image"]["auroc"], abs=1e-3)
    assert auroc >= MIN_AUROC, printed[-1500:]
