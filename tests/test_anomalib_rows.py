"""The anomalib peer rows (experiments/anomalib_rows.py, experiments/anomalib_peer.py) on a tiny phantom set.

They need the anomalib environment of ``experiments/anomalib_env.sh`` (or ``HDHKD_ANOMALIB_PYTHON``); without it
the tests skip, naming the command that makes it. About 40 s on the shared 2-core machine.
"""

import csv
import json
import os
import subprocess
from argparse import Namespace
from pathlib import Path

import pytest

from experiments import anomalib_rows
from experiments.anomalib_rows import ANOMALIB_ROWS, run_anomalib_rows
from experiments.run import REPO, prepare_data
from hdhkd_monai.data.phantom import write_phantom

DEFAULT_ENV = Path.home() / ".cache" / "hdhkd-monai" / "anomalib-env" / "bin" / "python"
SIZE = 64


@pytest.fixture(scope="module")
def anomalib_python() -> str:
    python = os.environ.get("HDHKD_ANOMALIB_PYTHON", str(DEFAULT_ENV))
    probe = [python, "-c", "import anomalib"]
    if not (Path(python).is_file() and subprocess.run(probe, capture_output=True, check=False).returncode == 0):
        pytest.skip(f"no anomalib environment at {python}: make it with experiments/anomalib_env.sh")
    return python


@pytest.fixture(scope="module")
def rows(anomalib_python, tmp_path_factory):
    """Both anomalib rows, run as ``experiments/run.py main`` runs them, into one run folder: (the folder, the
    datalist's test items, the rows by name)."""
    root = tmp_path_factory.mktemp("anomalib")
    data = write_phantom(root / "phantom", n_train=9, n_test_per_class=3, size=SIZE, seed=0)
    out = root / "out"
    args = Namespace(data=data, normal="NORMAL", val_fraction=0.15, image_size=SIZE, batch_size=4, iterations=2,
                     seed=0, fresh=False, baselines=list(ANOMALIB_ROWS))  # fmt: skip
    out.mkdir()
    datalist = prepare_data(args, out)
    preset = REPO / "configs" / "oct2017.json"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HDHKD_ANOMALIB_PYTHON", anomalib_python)
        table = run_anomalib_rows(args, out, datalist, preset)
    return out, json.loads(datalist.read_text())["test"], {row["name"]: row for row in table}


def read_scores(path: Path) -> dict[str, tuple[str, float]]:
    with open(path / "eval" / "scores.csv", newline="") as f:
        return {r["path"]: (r["label"], float(r["score"])) for r in csv.DictReader(f)}


def test_anomalib_rows_score_the_same_test_images_at_the_same_size(rows):
    """Every test image of the runner's datalist, the one every other row is scored on, with its label, at the
    runner's image size."""
    out, test_items, table = rows
    expected = {item["image"]: str(item["label"]) for item in test_items}
    for name in ANOMALIB_ROWS:
        scores = read_scores(out / "baselines" / name)
        assert {p: label for p, (label, _) in scores.items()} == expected
        assert len({s for _, s in scores.values()}) > 1, f"{name} gives every image the same score"
        assert table[name]["input_shapes"] == [[3, SIZE, SIZE]]  # what anomalib's torch model received
        assert table[name]["budget"]["image_size"] == SIZE and table[name]["budget"]["seed"] == 0
        assert 0 <= table[name]["image"]["auroc"] <= 1
        assert table[name]["image"]["n_normal"] == sum(item["label"] == 0 for item in test_items)


def test_a_second_run_reads_the_rows_back(rows, anomalib_python):
    out, _, table = rows
    args = Namespace(image_size=SIZE, batch_size=4, iterations=2, seed=0, fresh=False, baselines=list(ANOMALIB_ROWS))
    before = {n: (out / "baselines" / f"{n}.json").stat().st_mtime_ns for n in ANOMALIB_ROWS}
    commands = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HDHKD_ANOMALIB_PYTHON", anomalib_python)
        run = anomalib_rows.subprocess.run
        patch.setattr(anomalib_rows.subprocess, "run", lambda cmd, **kw: commands.append(cmd) or run(cmd, **kw))
        again = run_anomalib_rows(args, out, out / "datalist.json", REPO / "configs" / "oct2017.json")
    assert not [c for c in commands if "anomalib_peer.py" in str(c)], "the peer ran again for rows it recorded"
    assert [row["image"]["auroc"] for row in again] == [table[n]["image"]["auroc"] for n in ANOMALIB_ROWS]
    assert before == {n: (out / "baselines" / f"{n}.json").stat().st_mtime_ns for n in ANOMALIB_ROWS}


def test_fast_coreset_selects_what_anomalibs_own_selects(anomalib_python):
    check = """
import numpy as np
import torch
from anomalib.models.components import KCenterGreedy
from experiments.anomalib_peer import FastKCenterGreedy
points = torch.randn(3000, 40, generator=torch.Generator().manual_seed(0))
picked = []
for sampler in (KCenterGreedy, FastKCenterGreedy):
    torch.manual_seed(1)  # the first point and the projection's signs
    np.random.seed(1)  # the projection's non-zero entries (sklearn's sample_without_replacement)
    picked.append(sampler(points, sampling_ratio=0.05).select_coreset_idxs())
assert len(picked[0]) == 150 and picked[0] == picked[1], (picked[0][:10], picked[1][:10])
print("same", len(picked[0]))
"""
    # anomalib projects 40 dimensions up to 198 for 3000 points (its eps 0.9), as it projects 152 up on the real sets
    done = subprocess.run([anomalib_python, "-c", check], capture_output=True, text=True, cwd=REPO, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "same 150" in done.stdout
